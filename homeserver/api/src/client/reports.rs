//! Reporting content (client-server spec): events, rooms and users reported to the server;
//! and where they are read: the portal's endpoints for administrators and for a room's
//! moderators, and Synapse's `event_reports` admin API for the tools written for it.

use std::sync::Arc;

use axum::{
    extract::{Path, Query, State},
    http::request::Parts,
    Json,
};
use diplomatie_service::{
    reports::{ReportPage, ReportView},
    Error, Services,
};
use ruma::{
    api::client::{reporting::report_user, room::report_room},
    OwnedEventId, OwnedRoomId,
};
use serde::{Deserialize, Serialize};

use crate::{
    error::ApiError,
    ruma_wrapper::{authenticate, object_body, ApiResult, Ruma},
};

type S = State<Arc<Services>>;

/// `POST /rooms/{roomId}/report/{eventId}` `{"reason": ..., "score": -100..0}`, read by hand:
/// ruma's request has no `score`, which administrators are shown.
pub async fn report_event(
    State(s): S,
    Path((room_id, event_id)): Path<(String, String)>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Map<String, serde_json::Value>>, ApiError> {
    let caller = authenticate(&s, &parts).await?;
    let room_id = OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room id"))?;
    let event_id = OwnedEventId::try_from(event_id).map_err(|_| Error::invalid_param("Invalid event id"))?;
    let body = object_body(&body)?;
    let reason = match body.get("reason") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(r)) => Some(r.as_str()),
        Some(_) => return Err(Error::bad_json("reason must be a string").into()),
    };
    let score = match body.get("score") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(v.as_i64().ok_or_else(|| Error::bad_json("score must be an integer"))?),
    };
    s.reports.report_event(&caller.user_id, &room_id, &event_id, reason, score).await?;
    Ok(Json(serde_json::Map::new()))
}

/// `POST /rooms/{roomId}/report`.
pub async fn report_room(State(s): S, req: Ruma<report_room::v3::Request>) -> ApiResult<report_room::v3::Response> {
    s.reports.report_room(&req.caller().user_id, &req.body.room_id, &req.body.reason).await?;
    Ok(report_room::v3::Response::new().into())
}

/// `POST /users/{userId}/report`.
pub async fn report_user(State(s): S, req: Ruma<report_user::v3::Request>) -> ApiResult<report_user::v3::Response> {
    s.reports.report_user(&req.caller().user_id, &req.body.user_id, &req.body.reason).await?;
    Ok(report_user::v3::Response::new().into())
}

#[derive(Deserialize)]
pub struct ListQuery {
    from: Option<String>,
    limit: Option<usize>,
    kind: Option<String>,
}

/// `GET /_diplomatie/admin/v1/reports?kind=&from=&limit=`: every report, for administrators.
pub async fn list(State(s): S, Query(q): Query<ListQuery>, parts: Parts) -> Result<Json<ReportPage>, ApiError> {
    let caller = authenticate(&s, &parts).await?;
    let page = s.reports.list(&caller.user_id, q.kind.as_deref(), None, q.from.as_deref(), q.limit.unwrap_or(100));
    Ok(Json(page.await?))
}

/// `GET /_diplomatie/client/v1/rooms/{roomId}/reports`: the reports about a room and its
/// events, for its moderators (and administrators).
pub async fn room_list(
    State(s): S,
    Path(room_id): Path<String>,
    Query(q): Query<ListQuery>,
    parts: Parts,
) -> Result<Json<ReportPage>, ApiError> {
    let caller = authenticate(&s, &parts).await?;
    let room_id = OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room id"))?;
    let page =
        s.reports.list(&caller.user_id, q.kind.as_deref(), Some(&room_id), q.from.as_deref(), q.limit.unwrap_or(100));
    Ok(Json(page.await?))
}

fn report_id(raw: &str) -> Result<i64, Error> {
    raw.parse().map_err(|_| Error::invalid_param("Invalid report id"))
}

/// `GET /_diplomatie/admin/v1/reports/{id}`: one report, with the event reported.
pub async fn get(State(s): S, Path(id): Path<String>, parts: Parts) -> Result<Json<ReportView>, ApiError> {
    let caller = authenticate(&s, &parts).await?;
    Ok(Json(s.reports.get(&caller.user_id, report_id(&id)?).await?))
}

/// `DELETE /_diplomatie/admin/v1/reports/{id}`: a report dealt with.
pub async fn delete(
    State(s): S,
    Path(id): Path<String>,
    parts: Parts,
) -> Result<Json<serde_json::Map<String, serde_json::Value>>, ApiError> {
    let caller = authenticate(&s, &parts).await?;
    s.reports.delete(&caller.user_id, report_id(&id)?).await?;
    Ok(Json(serde_json::Map::new()))
}

/// Synapse's shape of an event report (`/_synapse/admin/v1/event_reports`).
#[derive(Serialize)]
pub struct SynapseEventReport {
    id: i64,
    received_ts: i64,
    room_id: Option<String>,
    event_id: Option<String>,
    user_id: String,
    reason: Option<String>,
    score: Option<i64>,
    sender: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_json: Option<serde_json::Value>,
}

impl From<ReportView> for SynapseEventReport {
    fn from(r: ReportView) -> Self {
        SynapseEventReport {
            id: r.id,
            received_ts: r.received_ts,
            room_id: r.room_id,
            event_id: r.event_id,
            user_id: r.user_id,
            reason: r.reason,
            score: r.score,
            sender: r.target_user_id,
            event_json: r.event_json,
        }
    }
}

#[derive(Serialize)]
pub struct SynapseEventReports {
    event_reports: Vec<SynapseEventReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<i64>,
    total: i64,
}

/// `GET /_synapse/admin/v1/event_reports`: the event reports, for Synapse's admin tools.
pub async fn synapse_list(
    State(s): S,
    Query(q): Query<ListQuery>,
    parts: Parts,
) -> Result<Json<SynapseEventReports>, ApiError> {
    let caller = authenticate(&s, &parts).await?;
    let page = s.reports.list(&caller.user_id, Some("event"), None, q.from.as_deref(), q.limit.unwrap_or(100)).await?;
    Ok(Json(SynapseEventReports {
        event_reports: page.reports.into_iter().map(Into::into).collect(),
        next_token: page.next_token.and_then(|t| t.parse().ok()),
        total: page.total,
    }))
}

/// `GET /_synapse/admin/v1/event_reports/{id}`.
pub async fn synapse_get(
    State(s): S,
    Path(id): Path<String>,
    parts: Parts,
) -> Result<Json<SynapseEventReport>, ApiError> {
    let caller = authenticate(&s, &parts).await?;
    Ok(Json(s.reports.get(&caller.user_id, report_id(&id)?).await?.into()))
}
