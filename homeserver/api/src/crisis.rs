//! Crisis cells for programs (`/_diplomatie/client/v1/crisis`): activation, alerts, the
//! situation report, the log's export, stand-down. Standard clients do the same through
//! commands in rooms (`!crise`, `!alerte`, `!point`, `!fin-de-crise`; see the service).

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::request::Parts,
    response::{IntoResponse, Response},
    Json,
};
use diplomatie_service::{
    crisis::{Activation, Sitrep},
    Error, Services,
};
use ruma::{OwnedEventId, OwnedRoomId};
use serde::{Deserialize, Serialize};

use crate::{
    admin::{caller, parse_body},
    error::ApiError,
};

type S = State<Arc<Services>>;

fn cell_id(id: String) -> Result<OwnedRoomId, Error> {
    OwnedRoomId::try_from(id).map_err(|_| Error::invalid_param("Invalid cell id (the cell's space room id)"))
}

/// `POST /_diplomatie/client/v1/crisis`: activates a cell, the caller its coordinator.
pub async fn activate(State(s): S, parts: Parts, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let caller = caller(&s, &parts).await?;
    let a: Activation = parse_body(&body)?;
    Ok(Json(s.crisis.activate(&caller.user_id, a).await?).into_response())
}

/// `GET /_diplomatie/client/v1/crisis/{cellId}`
pub async fn info(State(s): S, Path(id): Path<String>, parts: Parts) -> Result<Response, ApiError> {
    let caller = caller(&s, &parts).await?;
    Ok(Json(s.crisis.info(&caller.user_id, &cell_id(id)?).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Text {
    body: String,
}

#[derive(Serialize)]
struct Sent {
    event_id: OwnedEventId,
}

/// `POST /_diplomatie/client/v1/crisis/{cellId}/alert` `{"body": ...}` (the coordinator).
pub async fn alert(
    State(s): S,
    Path(id): Path<String>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let caller = caller(&s, &parts).await?;
    let text: Text = parse_body(&body)?;
    let event_id = s.crisis.alert(&caller.user_id, &cell_id(id)?, &text.body).await?;
    Ok(Json(Sent { event_id }).into_response())
}

#[derive(Serialize)]
struct Sitreps {
    current: Option<Sitrep>,
    history: Vec<Sitrep>,
}

/// `PUT /_diplomatie/client/v1/crisis/{cellId}/sitrep` `{"body": ...}` (focal points and the
/// coordinator).
pub async fn set_sitrep(
    State(s): S,
    Path(id): Path<String>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let caller = caller(&s, &parts).await?;
    let text: Text = parse_body(&body)?;
    Ok(Json(s.crisis.set_sitrep(&caller.user_id, &cell_id(id)?, &text.body).await?).into_response())
}

/// `GET /_diplomatie/client/v1/crisis/{cellId}/sitrep`: the current report and every version.
pub async fn sitreps(State(s): S, Path(id): Path<String>, parts: Parts) -> Result<Response, ApiError> {
    let caller = caller(&s, &parts).await?;
    let history = s.crisis.sitreps(&caller.user_id, &cell_id(id)?).await?;
    Ok(Json(Sitreps { current: history.last().cloned(), history }).into_response())
}

/// `GET /_diplomatie/client/v1/crisis/{cellId}/log`: the main courante as one document, which
/// `diplomatie verify` checks offline.
pub async fn log(State(s): S, Path(id): Path<String>, parts: Parts) -> Result<Response, ApiError> {
    let caller = caller(&s, &parts).await?;
    Ok(Json(s.crisis.export_log(&caller.user_id, &cell_id(id)?).await?).into_response())
}

#[derive(Serialize)]
struct StoodDown {
    log_reference: String,
}

/// `POST /_diplomatie/client/v1/crisis/{cellId}/stand_down` (the coordinator).
pub async fn stand_down(State(s): S, Path(id): Path<String>, parts: Parts) -> Result<Response, ApiError> {
    let caller = caller(&s, &parts).await?;
    let log_reference = s.crisis.stand_down(&caller.user_id, &cell_id(id)?).await?;
    Ok(Json(StoodDown { log_reference }).into_response())
}

#[derive(Serialize)]
struct Recipient {
    user_id: String,
    address: String,
}

#[derive(Serialize)]
struct Recipients {
    recipients: Vec<Recipient>,
}

/// `GET /_diplomatie/client/v1/crisis/{cellId}/alerts/{eventId}/recipients`: where an alert
/// goes by e-mail (for the e-mail bridge).
pub async fn alert_recipients(
    State(s): S,
    Path((id, event)): Path<(String, String)>,
    parts: Parts,
) -> Result<Response, ApiError> {
    let caller = crate::ruma_wrapper::authenticate(&s, &parts).await?;
    let event = OwnedEventId::try_from(event).map_err(|_| Error::invalid_param("Invalid event id"))?;
    let found = s.crisis.alert_recipients(&caller, &cell_id(id)?, &event).await?;
    let recipients = found.into_iter().map(|(user_id, address)| Recipient { user_id, address }).collect();
    Ok(Json(Recipients { recipients }).into_response())
}
