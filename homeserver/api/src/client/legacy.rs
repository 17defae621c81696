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
    let device = legacy_device(caller);
    let request = SyncRequest { user: &caller.user_id, device: &device, since, filter, full_state: false, timeout };
    sync_json(s.sync.sync(request).await?)
}

/// The device the old endpoints sync as, beside the caller's.
fn legacy_device(caller: &diplomatie_service::accounts::Caller) -> String {
    format!("legacy-stream:{}", caller.device_id)
}

/// An event in the old (v1) shape: its sender also as `user_id`.
fn v1(mut e: Value) -> Value {
    if let Some(o) = e.as_object_mut() {
        if let Some(sender) = o.get("sender").cloned() {
            o.entry("user_id").or_insert(sender);
        }
    }
    e
}

/// The users' presence in the old shape (the user also in `content.user_id`).
async fn presence_of(s: &Services, users: impl IntoIterator<Item = ruma::OwnedUserId>) -> Result<Vec<Value>, Error> {
    let now = diplomatie_service::now_ms();
    let mut out = Vec::new();
    for user in users {
        let p = s.ephemeral.presence(&user).await?;
        out.push(json!({
            "type": "m.presence",
            "sender": user,
            "content": {
                "user_id": user,
                "presence": p.state,
                "last_active_ago": (now - p.last_active_ts).max(0),
                "currently_active": p.state == "online",
                "status_msg": p.status_msg,
            },
        }));
    }
    Ok(out)
}

/// Each event of a list, with its room.
fn with_room(events: Option<&Value>, room_id: &str, out: &mut Vec<Value>) {
    for e in events.and_then(Value::as_array).into_iter().flatten() {
        let mut e = v1(e.clone());
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
    // An empty `from` is no token (clients of the old API send `from=` before their first).
    let from = match q.from.as_deref().filter(|t| !t.is_empty()) {
        Some(t) => parse_position(t)?,
        None => s.sync.current_token(),
    };
    let mut filter = SyncFilter::default();
    filter.room.timeline.limit = Some(100);
    filter.room.include_leave = true;
    let mut peeking = None;
    if let Some(room) = &q.room_id {
        let room_id =
            ruma::OwnedRoomId::try_from(room.as_str()).map_err(|_| Error::invalid_param("Invalid room id"))?;
        // A world-readable room may be followed by anyone (Sytest's guests do): its stream
        // device peeks into it, from `from` on (`Peeks::peek` refuses other rooms).
        let member = s.rooms.membership(&room_id, &caller.user_id).await? == Some(MembershipState::Join);
        if !member {
            s.peeks.peek(&caller.user_id, &legacy_device(&caller), &room_id, false).await?;
            peeking = Some(s.rooms.joined_members(&room_id).await?);
        }
        filter.room.rooms = Some(vec![room.clone()]);
    }
    let v = legacy_sync(&s, &caller, Some(from), filter, timeout).await?;
    let mut chunk = Vec::new();
    for section in ["join", "leave", "peek"] {
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
    // Presence: of everyone the caller shares a room with, or of the members of the room
    // peeked into.
    if q.room_id.is_none() || peeking.is_some() {
        for p in v.pointer("/presence/events").and_then(Value::as_array).into_iter().flatten() {
            let in_room = |members: &Arc<std::collections::HashSet<ruma::OwnedUserId>>| {
                p["sender"]
                    .as_str()
                    .and_then(|u| <&ruma::UserId>::try_from(u).ok())
                    .is_some_and(|u| members.contains(u))
            };
            if peeking.as_ref().is_some_and(|members| !in_room(members)) {
                continue;
            }
            let mut p = p.clone();
            p["content"]["user_id"] = p["sender"].clone();
            chunk.push(p);
        }
    }
    if q.room_id.is_none() {
        // Account data, global and of rooms, as the old stream carried it.
        chunk.extend(v.pointer("/account_data/events").and_then(Value::as_array).into_iter().flatten().cloned());
        for (room_id, room) in v["rooms"]["join"].as_object().into_iter().flatten() {
            with_room(room.pointer("/account_data/events"), room_id, &mut chunk);
        }
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
    let limit = number("limit", q.limit.as_deref())?.unwrap_or(10);
    filter.room.timeline.limit = Some(limit.clamp(1, 100));
    // The push rules are not account data in the old shape.
    filter.account_data.not_types = vec!["m.push_rules".into()];
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
            let id = ruma::RoomId::parse(room_id).map_err(diplomatie_service::internal!())?;
            if section == "leave" {
                // A departed room's state as it was when the caller left.
                let at_leave: Vec<Value> = s
                    .rooms
                    .state_for(&caller.user_id, &id)
                    .await?
                    .iter()
                    .filter_map(|p| serde_json::to_value(p.to_raw::<ruma::events::AnyStateEvent>(true)).ok())
                    .collect();
                with_room(Some(&Value::Array(at_leave)), room_id, &mut state);
            } else {
                with_room(room.pointer("/state/events"), room_id, &mut state);
                // The current state: the state before the timeline, then the timeline's.
                for e in chunk.iter().filter(|e| e.get("state_key").is_some()) {
                    state.retain(|s| s["type"] != e["type"] || s["state_key"] != e["state_key"]);
                    state.push(e.clone());
                }
            }
            if limit == 0 {
                chunk.clear();
            }
            entry["messages"] = json!({ "chunk": chunk, "start": room["timeline"]["prev_batch"], "end": end });
            entry["state"] = json!(state);
            entry["account_data"] = room.pointer("/account_data/events").cloned().unwrap_or(json!([]));
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
    // Everyone's presence the caller may see: their own and that of who shares a room.
    let mut users = s.rooms.users_sharing_rooms_with(&caller.user_id).await?;
    users.insert(caller.user_id.clone());
    let presence = presence_of(&s, users).await?;
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
    let asked = number("limit", q.limit.as_deref())?.unwrap_or(10);
    let limit = asked.clamp(1, 100) as usize;
    let paging = Paging { from: None, to: None, backwards: true, limit };
    let page = s.timeline.messages(user, &room_id, paging, &EventFilter::default()).await?;
    let mut events = page.events.clone();
    events.reverse();
    if asked == 0 {
        events.clear();
    }
    let chunk =
        s.rooms.client_raws::<ruma::events::AnyTimelineEvent>(&events, user, caller.device_id.as_str(), true).await?;
    let chunk: Vec<Value> = chunk.iter().filter_map(|e| serde_json::to_value(e).ok()).map(v1).collect();
    let state: Vec<Value> = state
        .iter()
        .filter_map(|p| serde_json::to_value(p.to_raw::<ruma::events::AnyStateEvent>(true)).ok())
        .map(v1)
        .collect();
    let membership = s.rooms.membership(&room_id, user).await?;
    let visibility = if s.directory.room_is_public(&room_id).await? { "public" } else { "private" };
    // A member sees the members' presence and their own account data of the room; a former
    // member sees neither (what happened after they left is not theirs).
    let joined = membership == Some(MembershipState::Join);
    let (presence, account_data) = if joined {
        let members = s.rooms.joined_members(&room_id).await?.iter().cloned().collect::<Vec<_>>();
        (presence_of(&s, members).await?, s.account_data.all_in(user, Some(&room_id)).await?)
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(Json(json!({
        "room_id": room_id,
        "membership": membership,
        "messages": {
            "chunk": chunk,
            "start": page.end.unwrap_or_else(|| page.start.clone()),
            "end": s.sync.current_token().to_string(),
        },
        "state": state,
        "presence": presence,
        "account_data": account_data,
        // Receipts are in `/sync` and the global `/initialSync`.
        "receipts": [],
        "visibility": visibility,
    })))
}
