//! The portal's formal correspondence and journals, for programs
//! (`/_diplomatie/client/v1/correspondence`, `/_diplomatie/client/v1/journal`). Standard clients
//! do the same through drafts, reactions and commands in rooms (see the service).

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    extract::{Path, State},
    http::request::Parts,
    response::{IntoResponse, Response},
    Json,
};
use diplomatie_service::{
    correspondence::{Audience, Composition, EncryptedDispatch, JournalItems, Status},
    Error, Services,
};
use ruma::{api::error::ErrorKind, OwnedUserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    admin::{caller, parse_body},
    error::ApiError,
};

type S = State<Arc<Services>>;

fn to_json<T: serde::Serialize>(v: T) -> Result<Response, ApiError> {
    Ok(Json(v).into_response())
}

/// An answer with nothing to say: `{}`.
#[derive(Serialize)]
struct Done {}

/// The answer of `reserve`.
#[derive(Serialize)]
struct Reference {
    reference: String,
}

/// The answer of `keys`: key id -> public key (unpadded base64).
#[derive(Serialize)]
struct CorrespondenceKeys {
    user_id: OwnedUserId,
    keys: BTreeMap<String, String>,
}

/// The answer of `follow`: whether the tag was not followed yet.
#[derive(Serialize)]
struct Followed {
    followed: bool,
}

/// The answer of `unfollow`: whether the tag was followed.
#[derive(Serialize)]
struct Unfollowed {
    unfollowed: bool,
}

/// `POST /_diplomatie/client/v1/correspondence`: a composition the server seals with the
/// author's key and dispatches, or `{"record": {...}}` a client signed itself.
pub async fn send(State(s): S, parts: Parts, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let caller = caller(&s, &parts).await?;
    let value: Value = parse_body(&body)?;
    let dispatched = match value.get("record") {
        Some(record) if value.as_object().is_some_and(|o| o.len() == 1) => {
            s.correspondence.send_signed_correspondence(&caller, record.clone()).await?
        }
        _ => {
            let c: Composition = parse_body(&body)?;
            s.correspondence.send_correspondence(&caller.user_id, Some(&caller.device_id), &c).await?
        }
    };
    to_json(dispatched)
}

#[derive(Deserialize)]
struct ReferenceRequest {
    from: String,
}

/// `POST /_diplomatie/client/v1/correspondence/references` `{"from": group}`: a reference for a
/// record the client will sign itself.
pub async fn reserve(State(s): S, parts: Parts, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let caller = caller(&s, &parts).await?;
    let req: ReferenceRequest = parse_body(&body)?;
    to_json(Reference { reference: s.correspondence.reserve_reference(&caller.user_id, &req.from).await? })
}

#[derive(Deserialize)]
struct KeyRequest {
    public_key: String,
}

/// `PUT /_diplomatie/client/v1/correspondence/keys/{key_id}` `{"public_key": base64}`.
pub async fn put_key(
    State(s): S,
    Path(key_id): Path<String>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let caller = caller(&s, &parts).await?;
    let req: KeyRequest = parse_body(&body)?;
    s.correspondence.register_correspondence_key(&caller.user_id, &key_id, &req.public_key).await?;
    to_json(Done {})
}

/// `GET /_diplomatie/client/v1/users/{user_id}/correspondence_keys`: the public keys that
/// verify a user's correspondence.
pub async fn keys(State(s): S, Path(user): Path<String>, parts: Parts) -> Result<Response, ApiError> {
    caller(&s, &parts).await?;
    let user = OwnedUserId::try_from(user).map_err(|_| Error::invalid_param("Invalid user id"))?;
    let keys = s.correspondence.correspondence_keys(&user).await?;
    to_json(CorrespondenceKeys { user_id: user, keys })
}

/// `GET /_diplomatie/client/v1/correspondence/{reference}`: the signed record and the keys
/// that verify it (what `diplomatie verify` checks).
pub async fn export(State(s): S, Path(reference): Path<String>, parts: Parts) -> Result<Response, ApiError> {
    let caller = caller(&s, &parts).await?;
    to_json(s.correspondence.export_correspondence(&caller, &reference).await?)
}

/// `GET /_diplomatie/client/v1/correspondence/{reference}/audience`.
pub async fn audience(State(s): S, Path(reference): Path<String>, parts: Parts) -> Result<Json<Audience>, ApiError> {
    let caller = caller(&s, &parts).await?;
    Ok(Json(s.correspondence.audience(&caller, &reference).await?))
}

#[derive(Deserialize)]
struct StatusRequest {
    status: String,
}

/// `PUT /_diplomatie/client/v1/correspondence/{reference}/status/{group}`
/// `{"status": "new" | "assigned" | "done"}`.
pub async fn set_status(
    State(s): S,
    Path((reference, group)): Path<(String, String)>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let caller = caller(&s, &parts).await?;
    let req: StatusRequest = parse_body(&body)?;
    let status = Status::parse(&req.status)
        .ok_or_else(|| Error::new(ErrorKind::InvalidParam, "status is new, assigned or done"))?;
    s.correspondence.set_action_status(&caller.user_id, &reference, &group, status).await?;
    to_json(Done {})
}

/// `GET /_diplomatie/client/v1/journal`: the caller's journal room, the action items of their
/// groups and the tags they follow.
pub async fn journal(State(s): S, parts: Parts) -> Result<Json<Journal>, ApiError> {
    let caller = caller(&s, &parts).await?;
    let items = s.correspondence.journal_items(&caller.user_id).await?;
    Ok(Json(Journal { room_id: s.correspondence.journal_of(&caller.user_id).await?, items }))
}

/// The answer of `journal`: the journal room, with its action items and followed tags.
#[derive(Serialize)]
pub struct Journal {
    room_id: Option<ruma::OwnedRoomId>,
    #[serde(flatten)]
    items: JournalItems,
}

/// `PUT /_diplomatie/client/v1/journal/tags/{tag}`: follows a tag.
pub async fn follow(State(s): S, Path(tag): Path<String>, parts: Parts) -> Result<Response, ApiError> {
    let caller = caller(&s, &parts).await?;
    let added = s.correspondence.follow_tag(&caller.user_id, &tag).await?;
    to_json(Followed { followed: added })
}

/// `DELETE /_diplomatie/client/v1/journal/tags/{tag}`: stops following a tag.
pub async fn unfollow(State(s): S, Path(tag): Path<String>, parts: Parts) -> Result<Response, ApiError> {
    let caller = caller(&s, &parts).await?;
    let removed = s.correspondence.unfollow_tag(&caller.user_id, &tag).await?;
    to_json(Unfollowed { unfollowed: removed })
}

/// `POST /_diplomatie/client/v1/correspondence/encrypted`: a DR correspondence whose signed
/// record the author's client sent, MLS-encrypted, into each group's DR room; the server
/// dispatches its metadata.
pub async fn send_encrypted(State(s): S, parts: Parts, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let caller = caller(&s, &parts).await?;
    let d: EncryptedDispatch = parse_body(&body)?;
    to_json(s.correspondence.send_encrypted_correspondence(&caller, d).await?)
}

#[derive(Deserialize, Serialize)]
struct DrRoom {
    room_id: ruma::OwnedRoomId,
}

/// `GET /_diplomatie/client/v1/groups/{slug}/dr_room`: the group's DR room.
pub async fn dr_room(State(s): S, Path(slug): Path<String>, parts: Parts) -> Result<Response, ApiError> {
    caller(&s, &parts).await?;
    to_json(DrRoom { room_id: s.correspondence.group_dr_room(&slug).await? })
}

/// `PUT /_diplomatie/client/v1/groups/{slug}/dr_room` `{"room_id"}`: a manager names it.
pub async fn set_dr_room(
    State(s): S,
    Path(slug): Path<String>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let caller = caller(&s, &parts).await?;
    let req: DrRoom = parse_body(&body)?;
    s.correspondence.set_group_dr_room(&caller, &slug, &req.room_id).await?;
    to_json(Done {})
}
