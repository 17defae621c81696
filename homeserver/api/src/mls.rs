//! The MLS delivery service of DR rooms, for MLS clients (`/_diplomatie/client/v1/mls`): the
//! server's MLS configuration, key packages, each room's group, commits, application messages
//! and the handshake log. MLS structures travel as unpadded base64 of their TLS encoding.

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Path, Query, State},
    http::request::Parts,
    response::{IntoResponse, Response},
    Json,
};
use diplomatie_service::Services;
use ruma::{OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedTransactionId, OwnedUserId};
use serde::{Deserialize, Serialize};

use crate::{
    admin::{caller, parse_body},
    error::ApiError,
};

type S = State<Arc<Services>>;

fn to_json<T: Serialize>(v: T) -> Result<Response, ApiError> {
    Ok(Json(v).into_response())
}

/// `GET /mls/config`: the ciphersuite and the server as external sender of its groups.
pub async fn config(State(s): S, parts: Parts) -> Result<Response, ApiError> {
    caller(&s, &parts).await?;
    to_json(s.mls.config())
}

#[derive(Deserialize)]
struct Upload {
    #[serde(default)]
    key_packages: Vec<String>,
    last_resort: Option<String>,
}

#[derive(Serialize)]
struct Count {
    count: i64,
}

/// `POST /mls/key_packages` `{"key_packages": [...], "last_resort": ...}`.
pub async fn upload(State(s): S, parts: Parts, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let c = caller(&s, &parts).await?;
    let req: Upload = parse_body(&body)?;
    let count =
        s.mls.upload_key_packages(&c.user_id, &c.device_id, &req.key_packages, req.last_resort.as_deref()).await?;
    to_json(Count { count })
}

#[derive(Deserialize)]
struct Claim {
    user_id: OwnedUserId,
    device_ids: Option<Vec<OwnedDeviceId>>,
    /// Only the devices that may join this room's group.
    room_id: Option<OwnedRoomId>,
}

#[derive(Serialize)]
struct Claimed {
    key_packages: HashMap<OwnedDeviceId, String>,
}

/// `POST /mls/key_packages/claim` `{"user_id", "device_ids"?, "room_id"?}`: one key package
/// per device (with `room_id`, per device that may join that room's group).
pub async fn claim(State(s): S, parts: Parts, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let c = caller(&s, &parts).await?;
    let req: Claim = parse_body(&body)?;
    let claimed =
        s.mls.claim_key_packages(&c.user_id, &req.user_id, req.device_ids.as_deref(), req.room_id.as_deref()).await?;
    to_json(Claimed { key_packages: claimed })
}

#[derive(Deserialize)]
struct NewGroup {
    group_info: String,
    ratchet_tree: String,
}

#[derive(Serialize)]
struct Epoch {
    epoch: u64,
}

/// `POST /mls/rooms/{roomId}/group` `{"group_info", "ratchet_tree"}`.
pub async fn create_group(
    State(s): S,
    Path(room_id): Path<OwnedRoomId>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let c = caller(&s, &parts).await?;
    let req: NewGroup = parse_body(&body)?;
    let epoch = s.mls.create_group(&c.user_id, &c.device_id, &room_id, &req.group_info, &req.ratchet_tree).await?;
    to_json(Epoch { epoch })
}

/// `GET /mls/rooms/{roomId}/group`: epoch, ratchet tree, devices.
pub async fn group(State(s): S, Path(room_id): Path<OwnedRoomId>, parts: Parts) -> Result<Response, ApiError> {
    let c = caller(&s, &parts).await?;
    to_json(s.mls.group(&c.user_id, &room_id).await?)
}

#[derive(Deserialize)]
pub struct Since {
    #[serde(default)]
    from_epoch: i64,
}

#[derive(Serialize)]
struct Handshakes {
    handshakes: Vec<diplomatie_service::mls::HandshakeView>,
}

/// `GET /mls/rooms/{roomId}/handshakes?from_epoch=N`.
pub async fn handshakes(
    State(s): S,
    Path(room_id): Path<OwnedRoomId>,
    Query(since): Query<Since>,
    parts: Parts,
) -> Result<Response, ApiError> {
    let c = caller(&s, &parts).await?;
    to_json(Handshakes { handshakes: s.mls.handshakes(&c.user_id, &room_id, since.from_epoch).await? })
}

#[derive(Deserialize)]
struct CommitRequest {
    commit: String,
    welcome: Option<String>,
    /// The new epoch's signed GroupInfo, kept for devices joining by an external commit.
    group_info: Option<String>,
}

/// `POST /mls/rooms/{roomId}/commit` `{"commit", "welcome"?, "group_info"?}`: 409
/// `FR_DIPLOMATIE_MLS_WRONG_EPOCH` when another commit won the epoch.
pub async fn commit(
    State(s): S,
    Path(room_id): Path<OwnedRoomId>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let c = caller(&s, &parts).await?;
    let req: CommitRequest = parse_body(&body)?;
    let accepted = s
        .mls
        .commit(&c.user_id, &c.device_id, &room_id, &req.commit, req.welcome.as_deref(), req.group_info.as_deref())
        .await?;
    to_json(accepted)
}

#[derive(Deserialize)]
struct Message {
    message: String,
}

#[derive(Serialize)]
struct Sent {
    event_id: OwnedEventId,
}

/// `PUT /mls/rooms/{roomId}/send/{txnId}` `{"message"}`: an application message.
pub async fn send(
    State(s): S,
    Path((room_id, txn_id)): Path<(OwnedRoomId, OwnedTransactionId)>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let c = caller(&s, &parts).await?;
    let req: Message = parse_body(&body)?;
    to_json(Sent { event_id: s.mls.send(&c.user_id, &c.device_id, &room_id, &txn_id, &req.message).await? })
}

/// `POST /_diplomatie/federation/v1/mls/{op}`: a partner server's request for one of its
/// users (signed `X-Matrix`; see `diplomatie_service::mls`'s partners).
pub async fn federation(
    State(s): S,
    Path(op): Path<String>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let (parts, bytes) = crate::ruma_wrapper::read_limited_body(request).await?;
    let origin = crate::ruma_wrapper::server_origin(&s, &parts, &bytes).await?;
    to_json(s.mls.serve_partner(&origin, &op, &bytes).await?)
}
