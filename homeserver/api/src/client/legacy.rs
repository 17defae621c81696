//! The endpoints the spec deprecated (and removed in v1.x) that older clients and Sytest still
//! call: `GET /events`, `GET /initialSync` and `GET /rooms/{roomId}/initialSync`. They are
//! answered from `/sync` and the room endpoints, in their old shapes: flat lists of events,
//! each with its `room_id`.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{rejection::QueryRejection, Path, Query, State},
    Json,
};
use diplomatie_service::{
    rooms::timeline::{EventFilter, Paging},
    sync::{SyncFilter, SyncRequest, SyncToken},
    Error, Services,
};
use ruma::events::room::member::MembershipState;
use serde::Deserialize;
use serde_json::{json, Value};

use super::sync::sync_json;
use crate::{error::ApiError, ruma_wrapper::authenticate};

type S = State<Arc<Services>>;

/// The positions `/events` takes: a `/sync` token, or a pagination token (an event position).
fn parse_position(token: &str) -> Result<SyncToken, Error> {
    SyncToken::parse(token).or_else(|_| {
        let stream = diplomatie_service::rooms::timeline::parse_token(token)?;
        Ok(SyncToken { stream, typing: 0 })
    })
}

/// A query string as these endpoints read it: every parameter a string, a malformed one
/// refused as the spec's error (axum's own answer is plain text).
fn query<Q>(query: Result<Query<Q>, QueryRejection>) -> Result<Q, Error> {
    query.map(|Query(q)| q).map_err(|e| Error::invalid_param(e.body_text()))
}

/// A numeric query parameter (`limit`, `timeout`).
fn number(name: &str, value: Option<&str>) -> Result<Option<u64>, Error> {
    value
        .map(|v| v.parse::<u64>().map_err(|_| Error::invalid_param(format!("{name} must be a non-negative integer"))))
        .transpose()
}

/// Runs `/sync` for these endpoints, as JSON. They sync as a device of their own, never the
/// caller's, whose to-device messages and sync bookkeeping belong to its `/sync`.
async fn legacy_sync(
    s: &Services,
    caller: &diplomatie_service::accounts::Caller,
    since: Option<SyncToken>,
    filter: SyncFilter,
    timeout: Duration,
) -> Result<Value, ApiError> {
    let device = format!("legacy-stream:{}", caller.device_id);
    let request = SyncRequest { user: &caller.user_id, device: &device, since, filter, full_state: false, timeout };
    sync_json(s.sync.sync(request).await?)
}

/// Each event of a list, with its room.
fn with_room(events: Option<&Value>, room_id: &str, out: &mut Vec<Value>) {
    for e in events.and_then(Value::as_array).into_iter().flatten() {
        let mut e = e.clone();
        if let Some(o) = e.as_object_mut() {
            o.insert("room_id".into(), json!(room_id));
        }
        out.push(e);
    }
}

#[derive(Deserialize)]
pub struct EventsQuery {
    from: Option<String>,
    timeout: Option<String>,
    room_id: Option<String>,
    limit: Option<String>,
}

/// `GET /events`: what happened since `from` in the caller's rooms (or in `room_id`), waiting
/// up to `timeout` ms for something.
pub async fn events(
    State(s): S,
    q: Result<Query<EventsQuery>, QueryRejection>,
    parts: http::request::Parts,
) -> Result<Json<Value>, ApiError> {
    let caller = authenticate(&s, &parts).await?;
    let q = query(q)?;
    number("limit", q.limit.as_deref())?;
    let timeout = Duration::from_millis(number("timeout", q.timeout.as_deref())?.unwrap_or(0).min(120_000));
    let from = match q.from.as_deref() {
        Some(t) => parse_position(t)?,
        None => s.sync.current_token(),
    };
    let mut filter = SyncFilter::default();
    filter.room.timeline.limit = Some(100);
    filter.room.include_leave = true;
    if let Some(room) = &q.room_id {
        let room_id =
            ruma::OwnedRoomId::try_from(room.as_str()).map_err(|_| Error::invalid_param("Invalid room id"))?;
        // A world-readable room may be asked for by anyone (Sytest's guests do), but peeking
        // is not built: a non-member waits and gets no event of it.
        let member = s.rooms.membership(&room_id, &caller.user_id).await? == Some(MembershipState::Join);
        if !member && !s.rooms.is_world_readable(&room_id).await? {
            return Err(Error::forbidden("You are not joined to this room").into());
        }
        filter.room.rooms = Some(vec![room.clone()]);
    }
    let v = legacy_sync(&s, &caller, Some(from), filter, timeout).await?;
    let mut chunk = Vec::new();
    for section in ["join", "leave"] {
        for (room_id, room) in v["rooms"][section].as_object().into_iter().flatten() {
            for part in ["/state/events", "/timeline/events", "/ephemeral/events"] {
                with_room(room.pointer(part), room_id, &mut chunk);
            }
        }
    }
    // An invite shows as the invitee's member event.
    for (room_id, room) in v["rooms"]["invite"].as_object().into_iter().flatten() {
        let events = room.pointer("/invite_state/events").and_then(Value::as_array).into_iter().flatten();
        for invite in events.filter(|e| e["type"] == "m.room.member" && e["state_key"] == caller.user_id.as_str()) {
            let mut invite = invite.clone();
            invite["room_id"] = json!(room_id);
            chunk.push(invite);
        }
    }
    if q.room_id.is_none() {
        chunk.extend(v.pointer("/presence/events").and_then(Value::as_array).into_iter().flatten().cloned());
    }
    Ok(Json(json!({ "chunk": chunk, "start": from.to_string(), "end": v["next_batch"] })))
}

#[derive(Deserialize)]
pub struct InitialSyncQuery {
    limit: Option<String>,
    archived: Option<String>,
}

/// `GET /initialSync`: every room of the caller with its newest events and current state,
/// presence, account data and receipts.
pub async fn initial_sync(
    State(s): S,
    q: Result<Query<InitialSyncQuery>, QueryRejection>,
    parts: http::request::Parts,
) -> Result<Json<Value>, ApiError> {
    let caller = authenticate(&s, &parts).await?;
    let q = query(q)?;
    let mut filter = SyncFilter::default();
    filter.room.timeline.limit = Some(number("limit", q.limit.as_deref())?.unwrap_or(10).clamp(1, 100));
    filter.room.include_leave = match q.archived.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(Error::invalid_param("archived must be true or false").into()),
    };
    let v = legacy_sync(&s, &caller, None, filter, Duration::ZERO).await?;
    let end = v["next_batch"].clone();
    let (mut rooms, mut receipts) = (Vec::new(), Vec::new());
    for (section, membership) in [("join", "join"), ("leave", "leave"), ("invite", "invite")] {
        for (room_id, room) in v["rooms"][section].as_object().into_iter().flatten() {
            let mut entry = json!({ "room_id": room_id, "membership": membership });
            if section == "invite" {
                let mut invite = Vec::new();
                with_room(room.pointer("/invite_state/events"), room_id, &mut invite);
                entry["invite"] = json!({ "events": invite });
                rooms.push(entry);
                continue;
            }
            let (mut chunk, mut state) = (Vec::new(), Vec::new());
            with_room(room.pointer("/timeline/events"), room_id, &mut chunk);
            with_room(room.pointer("/state/events"), room_id, &mut state);
            // The current state: the state before the timeline, then the timeline's.
            for e in chunk.iter().filter(|e| e.get("state_key").is_some()) {
                state.retain(|s| s["type"] != e["type"] || s["state_key"] != e["state_key"]);
                state.push(e.clone());
            }
            entry["messages"] = json!({ "chunk": chunk, "start": room["timeline"]["prev_batch"], "end": end });
            entry["state"] = json!(state);
            entry["account_data"] = room.pointer("/account_data/events").cloned().unwrap_or(json!([]));
            let id = ruma::RoomId::parse(room_id).map_err(diplomatie_service::internal!())?;
            let visibility = if s.directory.room_is_public(&id).await? { "public" } else { "private" };
            entry["visibility"] = json!(visibility);
            for e in room.pointer("/ephemeral/events").and_then(Value::as_array).into_iter().flatten() {
                if e["type"] == "m.receipt" {
                    let mut e = e.clone();
                    e["room_id"] = json!(room_id);
                    receipts.push(e);
                }
            }
            rooms.push(entry);
        }
    }
    let presence = v.pointer("/presence/events").cloned().unwrap_or(json!([]));
    let account_data = v.pointer("/account_data/events").cloned().unwrap_or(json!([]));
    Ok(Json(json!({
        "end": end,
        "rooms": rooms,
        "presence": presence,
        "account_data": account_data,
        "receipts": receipts,
    })))
}

#[derive(Deserialize)]
pub struct RoomInitialSyncQuery {
    limit: Option<String>,
}

/// `GET /rooms/{roomId}/initialSync`: one room's newest events and state, for its members
/// (up to their leave) and for anyone when it is world-readable.
pub async fn room_initial_sync(
    State(s): S,
    Path(room_id): Path<String>,
    q: Result<Query<RoomInitialSyncQuery>, QueryRejection>,
    parts: http::request::Parts,
) -> Result<Json<Value>, ApiError> {
    let caller = authenticate(&s, &parts).await?;
    let q = query(q)?;
    let room_id = ruma::OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room id"))?;
    let user = &caller.user_id;
    // Who may read the room's state may read this (members, former members, world-readable).
    let state = s.rooms.state_for(user, &room_id).await?;
    let limit = number("limit", q.limit.as_deref())?.unwrap_or(10).clamp(1, 100) as usize;
    let paging = Paging { from: None, to: None, backwards: true, limit };
    let page = s.timeline.messages(user, &room_id, paging, &EventFilter::default()).await?;
    let mut events = page.events.clone();
    events.reverse();
    let chunk =
        s.rooms.client_raws::<ruma::events::AnyTimelineEvent>(&events, user, caller.device_id.as_str(), true).await?;
    let membership = s.rooms.membership(&room_id, user).await?;
    let visibility = if s.directory.room_is_public(&room_id).await? { "public" } else { "private" };
    Ok(Json(json!({
        "room_id": room_id,
        "membership": membership,
        "messages": {
            "chunk": chunk,
            "start": page.end.unwrap_or_else(|| page.start.clone()),
            "end": s.sync.current_token().to_string(),
        },
        "state": state.iter().map(|p| p.to_raw::<ruma::events::AnyStateEvent>(true)).collect::<Vec<_>>(),
        // The old shape's keys; their members' presence and the room's account data are not
        // filled in yet.
        "presence": [],
        "account_data": [],
        "visibility": visibility,
    })))
}
