//! Retention and legal holds for administrators (`/_diplomatie/admin/v1`): a room's retention
//! policy, the purge (run now, and the record of every run), and legal holds (placed,
//! released, listed with their history).

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::request::Parts,
    Json,
};
use diplomatie_service::{
    retention::{HoldRequest, HoldView, Policy, PolicyView, RunView},
    Error, Services,
};
use ruma::OwnedRoomId;
use serde::{Deserialize, Serialize};

use crate::{
    admin::{admin, parse_body},
    error::ApiError,
};

type S = State<Arc<Services>>;

fn room_id(raw: String) -> Result<OwnedRoomId, Error> {
    OwnedRoomId::try_from(raw).map_err(|_| Error::invalid_param("Invalid room id"))
}

/// `GET /_diplomatie/admin/v1/rooms/{roomId}/retention`: the room's own policy and what applies.
pub async fn get_policy(State(s): S, Path(room): Path<String>, parts: Parts) -> Result<Json<PolicyView>, ApiError> {
    admin(&s, &parts).await?;
    Ok(Json(s.retention.policy(&room_id(room)?).await?))
}

/// `PUT /_diplomatie/admin/v1/rooms/{roomId}/retention` `{"messages_ms": ..., "media_ms": ...,
/// "correspondence_ms": ...}` (a field left out: the server's default).
pub async fn set_policy(
    State(s): S,
    Path(room): Path<String>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Json<PolicyView>, ApiError> {
    let caller = admin(&s, &parts).await?;
    let policy: Policy = parse_body(&body)?;
    Ok(Json(s.retention.set_policy(&caller.user_id, &room_id(room)?, &policy).await?))
}

/// `POST /_diplomatie/admin/v1/retention/purge`: one purge now; answers what it did.
pub async fn purge(State(s): S, parts: Parts) -> Result<Json<RunView>, ApiError> {
    admin(&s, &parts).await?;
    Ok(Json(s.retention.purge().await?))
}

#[derive(Serialize)]
pub struct Runs {
    runs: Vec<RunView>,
}

/// `GET /_diplomatie/admin/v1/retention/runs`: the last hundred purges, newest first.
pub async fn runs(State(s): S, parts: Parts) -> Result<Json<Runs>, ApiError> {
    admin(&s, &parts).await?;
    Ok(Json(Runs { runs: s.retention.runs().await? }))
}

#[derive(Serialize)]
pub struct Holds {
    holds: Vec<HoldView>,
}

/// `GET /_diplomatie/admin/v1/holds`: every hold, in force or released.
pub async fn holds(State(s): S, parts: Parts) -> Result<Json<Holds>, ApiError> {
    admin(&s, &parts).await?;
    Ok(Json(Holds { holds: s.retention.holds().await? }))
}

/// `POST /_diplomatie/admin/v1/holds` `{"scope": "room" | "group" | "user", "target": ...,
/// "reason": ...}`.
pub async fn place(State(s): S, parts: Parts, body: axum::body::Bytes) -> Result<Json<HoldView>, ApiError> {
    let caller = admin(&s, &parts).await?;
    let req: HoldRequest = parse_body(&body)?;
    Ok(Json(s.retention.place_hold(&caller.user_id, &req).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Release {
    reason: String,
}

/// `POST /_diplomatie/admin/v1/holds/{holdId}/release` `{"reason": ...}`.
pub async fn release(
    State(s): S,
    Path(hold): Path<String>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Json<HoldView>, ApiError> {
    let caller = admin(&s, &parts).await?;
    let req: Release = parse_body(&body)?;
    if req.reason.trim().is_empty() {
        return Err(Error::missing_param("A release states its reason").into());
    }
    Ok(Json(s.retention.release_hold(&caller.user_id, &hold, &req.reason).await?))
}
