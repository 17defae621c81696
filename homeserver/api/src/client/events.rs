//! Events: send, redact, get, `/messages`, `/context`, relations and threads
//! (client-server spec, "Events", "Relationships", "Threading").

use std::sync::Arc;

use axum::{extract::State, Json};
use diplomatie_service::{
    rooms::timeline::{EventFilter, Paging},
    Error, Services,
};
use ruma::api::{
    client::{
        context::get_context,
        filter::RoomEventFilter,
        message::{get_message_events, send_message_event},
        redact::redact_event,
        relations::{
            get_relating_events, get_relating_events_with_rel_type, get_relating_events_with_rel_type_and_event_type,
        },
        room::{get_event_by_timestamp, get_room_event},
        search::search_events,
        threads::get_threads,
    },
    Direction,
};
use ruma::{events::AnyMessageLikeEvent, serde::Raw};
use serde_json::Value;

use crate::{
    error::ApiError,
    ruma_wrapper::{ApiResult, Ruma, RumaResponse},
};

type S = State<Arc<Services>>;

/// Our view of a ruma filter (the server applies a subset of its fields).
pub fn event_filter(filter: &RoomEventFilter) -> EventFilter {
    serde_json::to_value(filter).ok().and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default()
}

pub async fn send_message(
    State(s): S,
    uri: http::Uri,
    req: Ruma<send_message_event::v3::Request>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    let caller = req.caller();
    let content: Value =
        serde_json::from_str(req.body.body.json().get()).map_err(|e| Error::bad_json(e.to_string()))?;
    let event_type = req.body.event_type.to_string();
    // MSC4140's first form: the delay as a query parameter of `/send` (matrix-js-sdk's).
    if let Some(delay_ms) = super::voip::asked_delay(&uri)? {
        let schedule = diplomatie_service::delayed::Schedule {
            room_id: &req.body.room_id,
            event_type: &event_type,
            state_key: None,
            content,
            delay_ms,
            txn_id: Some(req.body.txn_id.as_str()),
        };
        let id = s.delayed.schedule(&caller.user_id, &caller.device_id, schedule).await?;
        return Ok(super::voip::delayed_answer(id));
    }
    let id = s
        .timeline
        .send_message(&caller.user_id, &caller.device_id, &req.body.room_id, &event_type, &req.body.txn_id, content)
        .await?;
    Ok(RumaResponse(send_message_event::v3::Response::new(id)).into_response())
}

pub async fn redact(State(s): S, req: Ruma<redact_event::v3::Request>) -> ApiResult<redact_event::v3::Response> {
    let caller = req.caller().clone();
    let b = req.body;
    let id =
        s.timeline.redact(&caller.user_id, &caller.device_id, &b.room_id, &b.event_id, &b.txn_id, b.reason).await?;
    Ok(redact_event::v3::Response::new(id).into())
}

/// Synapse's `POST /rooms/{roomId}/send/{eventType}`, without a transaction id: each request
/// is a new event (older clients and Sytest use it).
pub async fn send_without_txn(
    State(s): S,
    axum::extract::Path((room_id, event_type)): axum::extract::Path<(String, String)>,
    parts: http::request::Parts,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let caller = crate::ruma_wrapper::authenticate(&s, &parts).await?;
    let room_id = room_id_of(room_id)?;
    let content = crate::ruma_wrapper::object_body(&body)?;
    let txn_id = ruma::TransactionId::new();
    let id =
        s.timeline.send_message(&caller.user_id, &caller.device_id, &room_id, &event_type, &txn_id, content).await?;
    Ok(Json(serde_json::json!({ "event_id": id })))
}

/// Synapse's `POST /rooms/{roomId}/redact/{eventId}`, without a transaction id (the body, with
/// its `reason`, may be empty).
pub async fn redact_without_txn(
    State(s): S,
    axum::extract::Path((room_id, event_id)): axum::extract::Path<(String, String)>,
    parts: http::request::Parts,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let caller = crate::ruma_wrapper::authenticate(&s, &parts).await?;
    let room_id = room_id_of(room_id)?;
    let event_id = ruma::OwnedEventId::try_from(event_id).map_err(|_| Error::invalid_param("Invalid event id"))?;
    let content =
        if body.is_empty() { Value::Object(Default::default()) } else { crate::ruma_wrapper::object_body(&body)? };
    let reason = content.get("reason").and_then(Value::as_str).map(str::to_owned);
    let txn_id = ruma::TransactionId::new();
    let id = s.timeline.redact(&caller.user_id, &caller.device_id, &room_id, &event_id, &txn_id, reason).await?;
    Ok(Json(serde_json::json!({ "event_id": id })))
}

fn room_id_of(room_id: String) -> Result<ruma::OwnedRoomId, ApiError> {
    Ok(ruma::OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room id"))?)
}

pub async fn get_event(State(s): S, req: Ruma<get_room_event::v3::Request>) -> ApiResult<get_room_event::v3::Response> {
    let caller = req.caller();
    // A room the user may not read hides its events: "not found", as for one they may not see
    // (Synapse's answer; it tells nothing of what the room holds).
    let pdu = match s.rooms.event_for_user(&caller.user_id, &req.body.room_id, &req.body.event_id).await {
        Err(Error::Matrix(ruma::api::error::ErrorKind::Forbidden, _)) => {
            return Err(Error::not_found("Event not found").into());
        }
        other => other?,
    };
    let event = s.rooms.client_raw(&pdu, &caller.user_id, caller.device_id.as_str(), true).await?;
    Ok(get_room_event::v3::Response::new(event).into())
}

/// `GET /rooms/{roomId}/messages`
pub async fn messages(
    State(s): S,
    req: Ruma<get_message_events::v3::Request>,
) -> ApiResult<get_message_events::v3::Response> {
    let b = &req.body;
    let filter = event_filter(&b.filter);
    let backwards = b.dir == Direction::Backward;
    let limit = u64::from(b.limit) as usize;
    let paging = Paging { from: b.from.as_deref(), to: b.to.as_deref(), backwards, limit };
    let caller = req.caller();
    let page = s.timeline.messages(&caller.user_id, &b.room_id, paging, &filter).await?;
    let mut response = get_message_events::v3::Response::new();
    response.start = page.start;
    response.end = page.end;
    response.chunk = s.rooms.client_raws(&page.events, &caller.user_id, caller.device_id.as_str(), true).await?;
    response.state = page.state.iter().map(|p| p.to_raw(true)).collect();
    Ok(response.into())
}

/// `GET /rooms/{roomId}/timestamp_to_event?ts=&dir=`
pub async fn timestamp_to_event(
    State(s): S,
    req: Ruma<get_event_by_timestamp::v1::Request>,
) -> ApiResult<get_event_by_timestamp::v1::Response> {
    let b = &req.body;
    let forward = b.dir == ruma::api::Direction::Forward;
    let ts = i64::from(b.ts.get());
    let (event_id, ts) = s.timeline.event_at_timestamp(&req.caller().user_id, &b.room_id, ts, forward).await?;
    let ts = ruma::MilliSecondsSinceUnixEpoch(ruma::UInt::try_from(ts).unwrap_or_default());
    Ok(get_event_by_timestamp::v1::Response::new(event_id, ts).into())
}

/// `GET /rooms/{roomId}/context/{eventId}`
pub async fn context(State(s): S, req: Ruma<get_context::v3::Request>) -> ApiResult<get_context::v3::Response> {
    let b = &req.body;
    let filter = event_filter(&b.filter);
    let caller = req.caller();
    let (event, before, after) =
        s.timeline.context(&caller.user_id, &b.room_id, &b.event_id, u64::from(b.limit) as usize, &filter).await?;
    let (user, device) = (&caller.user_id, caller.device_id.as_str());
    let mut response = get_context::v3::Response::new();
    response.event = Some(s.rooms.client_raw(&event, user, device, true).await?);
    response.events_before = s.rooms.client_raws(&before.events, user, device, true).await?;
    response.events_after = s.rooms.client_raws(&after.events, user, device, true).await?;
    response.state = before.state.iter().map(|p| p.to_raw(true)).collect();
    response.start = Some(before.start);
    response.end = after.end;
    Ok(response.into())
}

#[allow(clippy::too_many_arguments)]
async fn relations_page(
    s: &Services,
    caller: &diplomatie_service::accounts::Caller,
    room_id: &ruma::RoomId,
    event_id: &ruma::EventId,
    rel_type: Option<&str>,
    event_type: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
    dir: Direction,
    limit: Option<ruma::UInt>,
) -> Result<(Vec<Raw<AnyMessageLikeEvent>>, Option<String>), ApiError> {
    let limit = limit.map_or(50, |l| u64::from(l) as usize);
    let (events, next) = s
        .timeline
        .relations(
            &caller.user_id,
            room_id,
            event_id,
            rel_type,
            event_type,
            from,
            to,
            dir == Direction::Backward,
            limit,
        )
        .await?;
    Ok((events.iter().map(|p| p.to_raw(true)).collect(), next))
}

pub async fn relations(
    State(s): S,
    req: Ruma<get_relating_events::v1::Request>,
) -> ApiResult<get_relating_events::v1::Response> {
    let b = &req.body;
    let (chunk, next) = relations_page(
        &s,
        req.caller(),
        &b.room_id,
        &b.event_id,
        None,
        None,
        b.from.as_deref(),
        b.to.as_deref(),
        b.dir,
        b.limit,
    )
    .await?;
    let mut response = get_relating_events::v1::Response::new(chunk);
    response.next_batch = next;
    Ok(response.into())
}

pub async fn relations_with_type(
    State(s): S,
    req: Ruma<get_relating_events_with_rel_type::v1::Request>,
) -> ApiResult<get_relating_events_with_rel_type::v1::Response> {
    let b = &req.body;
    let rel = b.rel_type.to_string();
    let (chunk, next) = relations_page(
        &s,
        req.caller(),
        &b.room_id,
        &b.event_id,
        Some(&rel),
        None,
        b.from.as_deref(),
        b.to.as_deref(),
        b.dir,
        b.limit,
    )
    .await?;
    let mut response = get_relating_events_with_rel_type::v1::Response::new(chunk);
    response.next_batch = next;
    Ok(response.into())
}

pub async fn relations_with_type_and_event_type(
    State(s): S,
    req: Ruma<get_relating_events_with_rel_type_and_event_type::v1::Request>,
) -> ApiResult<get_relating_events_with_rel_type_and_event_type::v1::Response> {
    let b = &req.body;
    let rel = b.rel_type.to_string();
    let kind = b.event_type.to_string();
    let (chunk, next) = relations_page(
        &s,
        req.caller(),
        &b.room_id,
        &b.event_id,
        Some(&rel),
        Some(&kind),
        b.from.as_deref(),
        b.to.as_deref(),
        b.dir,
        b.limit,
    )
    .await?;
    let mut response = get_relating_events_with_rel_type_and_event_type::v1::Response::new(chunk);
    response.next_batch = next;
    Ok(response.into())
}

/// `GET /rooms/{roomId}/threads`
pub async fn threads(State(s): S, req: Ruma<get_threads::v1::Request>) -> ApiResult<get_threads::v1::Response> {
    let b = &req.body;
    let participated = b.include == get_threads::v1::IncludeThreads::Participated;
    let limit = b.limit.map_or(50, |l| u64::from(l) as usize);
    let caller = req.caller();
    let (user, device) = (&caller.user_id, caller.device_id.as_str());
    let (roots, next) = s.timeline.threads(user, device, &b.room_id, participated, b.from.as_deref(), limit).await?;
    let mut response = get_threads::v1::Response::new(s.rooms.client_raws(&roots, user, device, true).await?);
    response.next_batch = next;
    Ok(response.into())
}

/// What `POST /search` answers: ruma's result object, with `results` always stated (ruma
/// leaves an empty list out; Synapse states it, and clients iterate it without a check).
#[derive(serde::Serialize)]
pub struct SearchAnswer {
    search_categories: SearchCategories,
}

#[derive(serde::Serialize)]
struct SearchCategories {
    #[serde(skip_serializing_if = "Option::is_none")]
    room_events: Option<RoomEvents>,
}

#[derive(serde::Serialize)]
struct RoomEvents {
    #[serde(flatten)]
    found: search_events::v3::ResultRoomEvents,
    results: Vec<search_events::v3::SearchResult>,
}

/// `POST /search` (client-server spec, "Server Side Search"): `room_events` only, the one
/// category the spec defines.
pub async fn search(State(s): S, req: Ruma<search_events::v3::Request>) -> Result<Json<SearchAnswer>, ApiError> {
    let mut room_events = None;
    if let Some(criteria) = &req.body.search_categories.room_events {
        // Our own view of the criteria, as for filters.
        let criteria = serde_json::to_value(criteria)
            .and_then(serde_json::from_value)
            .map_err(|e| Error::bad_json(e.to_string()))?;
        let mut found =
            s.search.search_room_events(&req.caller().user_id, criteria, req.body.next_batch.as_deref()).await?;
        let results = std::mem::take(&mut found.results);
        room_events = Some(RoomEvents { found, results });
    }
    Ok(Json(SearchAnswer { search_categories: SearchCategories { room_events } }))
}
