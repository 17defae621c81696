//! `/sync` and what it reports beside the timeline: filters, typing, receipts, read markers,
//! account data, tags, presence.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::State,
    response::{IntoResponse, Response},
};
use diplomatie_service::{
    pdu::raw,
    sliding::SlidingRequest,
    sync::{SyncAnswer, SyncFilter, SyncRequest, SyncToken},
    Error, Services,
};
use ruma::{
    api::client::{
        config::{get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data},
        filter::{create_filter, get_filter},
        presence::{get_presence, set_presence},
        read_marker::set_read_marker,
        receipt::create_receipt::{self, v3::ReceiptType},
        sync::sync_events,
        tag::{create_tag, delete_tag, get_tags},
        typing::create_typing_event,
    },
    events::receipt::ReceiptThread,
    presence::PresenceState,
    UserId,
};
use serde_json::{json, Value};

use crate::{
    error::ApiError,
    ruma_wrapper::{ApiResult, Ruma, RumaResponse},
};

type S = State<Arc<Services>>;

fn only_self(caller: &UserId, target: &UserId) -> Result<(), ApiError> {
    if caller != target {
        return Err(Error::forbidden("You may only access your own data").into());
    }
    Ok(())
}

/// `GET /sync`, its answer with every section present, empty or not, as Synapse gives it.
pub async fn sync(state: S, req: Ruma<sync_events::v3::Request>) -> Result<Response, ApiError> {
    let answer = sync_answer(state, req).await?;
    Ok(axum::Json(sync_json(answer)?).into_response())
}

/// A `/sync` answer as JSON, every section present, with the rooms peeked into (MSC2753's
/// `rooms.peek`) when there are any.
pub(crate) fn sync_json(answer: SyncAnswer) -> Result<Value, ApiError> {
    use ruma::api::OutgoingResponseExt;
    let http = answer.body.try_into_http_response::<Vec<u8>>().map_err(diplomatie_service::internal!())?;
    let mut v: Value = serde_json::from_slice(http.body()).map_err(diplomatie_service::internal!())?;
    if !answer.peek.is_empty() {
        let peek = serde_json::to_value(&answer.peek).map_err(diplomatie_service::internal!())?;
        if let Some(rooms) = v.as_object_mut().map(|o| o.entry("rooms").or_insert_with(|| json!({}))) {
            rooms["peek"] = peek;
        }
    }
    complete_sync_sections(&mut v);
    Ok(v)
}

/// Adds the sections ruma leaves out when they are empty or false: clients and Sytest expect
/// `timeline.limited`, `state.events` and the others to be there (the spec marks most of them
/// required).
fn complete_sync_sections(v: &mut Value) {
    fn ensure<'a>(o: &'a mut Value, key: &str, default: Value) -> &'a mut Value {
        let map = o.as_object_mut().expect("an object");
        map.entry(key.to_owned()).or_insert(default)
    }
    let empty_events = || json!({ "events": [] });
    for key in ["presence", "account_data", "to_device"] {
        ensure(v, key, empty_events());
    }
    ensure(v, "device_lists", json!({ "changed": [], "left": [] }));
    let rooms = ensure(v, "rooms", json!({}));
    for section in ["join", "invite", "leave", "knock"] {
        ensure(rooms, section, json!({}));
    }
    let sections = [
        ("join", &["state", "timeline", "ephemeral", "account_data"][..]),
        ("peek", &["state", "timeline", "ephemeral", "account_data"][..]),
        ("leave", &["state", "timeline", "account_data"][..]),
    ];
    for (section, parts) in sections {
        let Some(map) = rooms.get_mut(section).and_then(Value::as_object_mut) else { continue };
        for room in map.values_mut().filter(|r| r.is_object()) {
            for part in parts {
                let p = ensure(room, part, empty_events());
                if p.is_object() {
                    ensure(p, "events", json!([]));
                }
            }
            if let Some(t) = room.get_mut("timeline").filter(|t| t.is_object()) {
                ensure(t, "limited", json!(false));
            }
            if section == "join" {
                ensure(room, "unread_notifications", json!({ "highlight_count": 0, "notification_count": 0 }));
                ensure(room, "summary", json!({}));
            }
        }
    }
    if let Some(map) = rooms.get_mut("invite").and_then(Value::as_object_mut) {
        for room in map.values_mut().filter(|r| r.is_object()) {
            let p = ensure(room, "invite_state", empty_events());
            if p.is_object() {
                ensure(p, "events", json!([]));
            }
        }
    }
}

async fn sync_answer(State(s): S, req: Ruma<sync_events::v3::Request>) -> Result<SyncAnswer, ApiError> {
    let user = &req.caller().user_id;
    let filter: SyncFilter = match &req.body.filter {
        None => SyncFilter::default(),
        Some(sync_events::v3::Filter::FilterDefinition(def)) => {
            serde_json::to_value(def).ok().and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default()
        }
        Some(sync_events::v3::Filter::FilterId(id)) => {
            let v = s.account_data.filter(user, id).await?;
            serde_json::from_value(v).unwrap_or_default()
        }
        Some(_) => SyncFilter::default(),
    };
    let since = req.body.since.as_deref().map(SyncToken::parse).transpose()?;
    if req.body.set_presence != PresenceState::Offline {
        // Syncing marks the user online (or as the client asks), as Synapse does.
        s.ephemeral.presence_on_sync(user, &req.body.set_presence).await?;
    }
    let answer = s
        .sync
        .sync(SyncRequest {
            user,
            device: req.caller().device_id.as_str(),
            since,
            filter,
            full_state: req.body.full_state,
            timeout: req.body.timeout.unwrap_or(Duration::ZERO),
        })
        .await?;
    Ok(answer)
}

/// `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync` (simplified sliding
/// sync, MSC4186).
pub async fn sliding_sync(State(s): S, req: Ruma<sync_events::v5::Request>) -> ApiResult<sync_events::v5::Response> {
    let caller = req.caller();
    if req.body.set_presence != PresenceState::Offline {
        s.ephemeral.presence_on_sync(&caller.user_id, &req.body.set_presence).await?;
    }
    let request = SlidingRequest { user: &caller.user_id, device: caller.device_id.as_str(), body: &req.body };
    Ok(s.sliding.sync(request).await?.into())
}

pub async fn create_filter(
    State(s): S,
    req: Ruma<create_filter::v3::Request>,
) -> ApiResult<create_filter::v3::Response> {
    only_self(&req.caller().user_id, &req.body.user_id)?;
    let v = serde_json::to_value(&req.body.filter).map_err(|e| Error::bad_json(e.to_string()))?;
    let id = s.account_data.create_filter(&req.caller().user_id, &v).await?;
    Ok(create_filter::v3::Response::new(id).into())
}

pub async fn get_filter(State(s): S, req: Ruma<get_filter::v3::Request>) -> ApiResult<get_filter::v3::Response> {
    only_self(&req.caller().user_id, &req.body.user_id)?;
    let filter = s.account_data.filter(&req.caller().user_id, &req.body.filter_id).await?;
    Ok(get_filter::v3::Response::new(serde_json::from_value(filter).map_err(diplomatie_service::internal!())?).into())
}

/// `PUT /rooms/{roomId}/typing/{userId}`, read by hand: ruma's type requires `timeout`, which
/// clients leave out (it then lasts 30 s, Synapse's default).
pub async fn typing(
    State(s): S,
    axum::extract::Path((room_id, user_id)): axum::extract::Path<(String, String)>,
    parts: http::request::Parts,
    body: axum::body::Bytes,
) -> Result<RumaResponse<create_typing_event::v3::Response>, ApiError> {
    let caller = crate::ruma_wrapper::authenticate(&s, &parts).await?;
    let room_id = ruma::OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room id"))?;
    let user_id = ruma::OwnedUserId::try_from(user_id).map_err(|_| Error::invalid_param("Invalid user id"))?;
    only_self(&caller.user_id, &user_id)?;
    let body = crate::ruma_wrapper::object_body(&body)?;
    let typing = match body.get("typing") {
        Some(Value::Bool(t)) => *t,
        Some(_) => return Err(Error::bad_json("typing must be a boolean").into()),
        None => return Err(Error::missing_param("Missing typing").into()),
    };
    let timeout = match body.get("timeout") {
        None => 30_000,
        Some(t) => t.as_u64().ok_or_else(|| Error::bad_json("timeout must be a non-negative integer"))?,
    };
    s.ephemeral.set_typing(&caller.user_id, &room_id, typing, typing.then_some(timeout)).await?;
    Ok(create_typing_event::v3::Response::new().into())
}

pub async fn receipt(State(s): S, req: Ruma<create_receipt::v3::Request>) -> ApiResult<create_receipt::v3::Response> {
    let b = &req.body;
    s.ephemeral.set_receipt(&req.caller().user_id, &b.room_id, &b.receipt_type, &b.event_id, &b.thread).await?;
    Ok(create_receipt::v3::Response::new().into())
}

pub async fn read_markers(
    State(s): S,
    req: Ruma<set_read_marker::v3::Request>,
) -> ApiResult<set_read_marker::v3::Response> {
    let b = &req.body;
    let user = &req.caller().user_id;
    if let Some(id) = &b.fully_read {
        s.ephemeral.set_receipt(user, &b.room_id, &ReceiptType::FullyRead, id, &ReceiptThread::Unthreaded).await?;
    }
    if let Some(id) = &b.read_receipt {
        s.ephemeral.set_receipt(user, &b.room_id, &ReceiptType::Read, id, &ReceiptThread::Unthreaded).await?;
    }
    if let Some(id) = &b.private_read_receipt {
        s.ephemeral.set_receipt(user, &b.room_id, &ReceiptType::ReadPrivate, id, &ReceiptThread::Unthreaded).await?;
    }
    Ok(set_read_marker::v3::Response::new().into())
}

/// Account data types the server manages: clients read them but set them only through their
/// own endpoints (push rules, read markers). The spec's answer is 405 `M_BAD_JSON`.
fn server_managed(event_type: &str) -> Option<Response> {
    matches!(event_type, "m.push_rules" | "m.fully_read").then(|| {
        let body = json!({ "errcode": "M_BAD_JSON", "error": format!("Cannot set {event_type} through this API") });
        (http::StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
    })
}

pub async fn set_global_account_data(
    State(s): S,
    req: Ruma<set_global_account_data::v3::Request>,
) -> Result<Response, ApiError> {
    only_self(&req.caller().user_id, &req.body.user_id)?;
    if let Some(refused) = server_managed(&req.body.event_type.to_string()) {
        return Ok(refused);
    }
    let content: Value =
        serde_json::from_str(req.body.data.json().get()).map_err(|e| Error::bad_json(e.to_string()))?;
    s.account_data.set(&req.caller().user_id, None, &req.body.event_type.to_string(), &content).await?;
    Ok(RumaResponse(set_global_account_data::v3::Response::new()).into_response())
}

pub async fn global_account_data(
    State(s): S,
    req: Ruma<get_global_account_data::v3::Request>,
) -> ApiResult<get_global_account_data::v3::Response> {
    only_self(&req.caller().user_id, &req.body.user_id)?;
    let kind = req.body.event_type.to_string();
    let content = if kind == "m.push_rules" {
        // Stored or not, the user's rules (the defaults until one changes).
        s.push.default_push_rules_event(&req.caller().user_id).await?["content"].take()
    } else {
        s.account_data.get(&req.caller().user_id, None, &kind).await?
    };
    Ok(get_global_account_data::v3::Response::new(raw(&content)).into())
}

pub async fn set_room_account_data(
    State(s): S,
    req: Ruma<set_room_account_data::v3::Request>,
) -> Result<Response, ApiError> {
    only_self(&req.caller().user_id, &req.body.user_id)?;
    if let Some(refused) = server_managed(&req.body.event_type.to_string()) {
        return Ok(refused);
    }
    let content: Value =
        serde_json::from_str(req.body.data.json().get()).map_err(|e| Error::bad_json(e.to_string()))?;
    s.account_data
        .set(&req.caller().user_id, Some(&req.body.room_id), &req.body.event_type.to_string(), &content)
        .await?;
    Ok(RumaResponse(set_room_account_data::v3::Response::new()).into_response())
}

pub async fn room_account_data(
    State(s): S,
    req: Ruma<get_room_account_data::v3::Request>,
) -> ApiResult<get_room_account_data::v3::Response> {
    only_self(&req.caller().user_id, &req.body.user_id)?;
    let b = &req.body;
    let content = s.account_data.get(&req.caller().user_id, Some(&b.room_id), &b.event_type.to_string()).await?;
    Ok(get_room_account_data::v3::Response::new(raw(&content)).into())
}

/// Room tags live in the room account data `m.tag`, as the spec describes.
async fn tags_of(s: &Services, user: &UserId, room_id: &ruma::RoomId) -> Result<Value, ApiError> {
    Ok(match s.account_data.get(user, Some(room_id), "m.tag").await {
        Ok(v) => v,
        Err(Error::Matrix(ruma::api::error::ErrorKind::NotFound, _)) => json!({ "tags": {} }),
        Err(e) => return Err(e.into()),
    })
}

pub async fn tags(State(s): S, req: Ruma<get_tags::v3::Request>) -> ApiResult<get_tags::v3::Response> {
    only_self(&req.caller().user_id, &req.body.user_id)?;
    let mut tags = tags_of(&s, &req.body.user_id, &req.body.room_id).await?;
    let tags: ruma::events::tag::Tags = serde_json::from_value(tags["tags"].take()).unwrap_or_default();
    Ok(get_tags::v3::Response::new(tags).into())
}

pub async fn set_tag(State(s): S, req: Ruma<create_tag::v3::Request>) -> ApiResult<create_tag::v3::Response> {
    let b = &req.body;
    only_self(&req.caller().user_id, &b.user_id)?;
    let mut tags = tags_of(&s, &b.user_id, &b.room_id).await?;
    tags["tags"][b.tag.as_str()] = serde_json::to_value(&b.tag_info).unwrap_or(json!({}));
    s.account_data.set(&b.user_id, Some(&b.room_id), "m.tag", &tags).await?;
    Ok(create_tag::v3::Response::new().into())
}

pub async fn delete_tag(State(s): S, req: Ruma<delete_tag::v3::Request>) -> ApiResult<delete_tag::v3::Response> {
    let b = &req.body;
    only_self(&req.caller().user_id, &b.user_id)?;
    let mut tags = tags_of(&s, &b.user_id, &b.room_id).await?;
    if let Some(map) = tags["tags"].as_object_mut() {
        map.remove(&b.tag);
    }
    s.account_data.set(&b.user_id, Some(&b.room_id), "m.tag", &tags).await?;
    Ok(delete_tag::v3::Response::new().into())
}

pub async fn set_presence(State(s): S, req: Ruma<set_presence::v3::Request>) -> ApiResult<set_presence::v3::Response> {
    only_self(&req.caller().user_id, &req.body.user_id)?;
    s.ephemeral.set_presence(&req.body.user_id, &req.body.presence, req.body.status_msg.as_deref()).await?;
    Ok(set_presence::v3::Response::new().into())
}

pub async fn presence(State(s): S, req: Ruma<get_presence::v3::Request>) -> ApiResult<get_presence::v3::Response> {
    let p = s.ephemeral.presence(&req.body.user_id).await?;
    let mut response = get_presence::v3::Response::new(PresenceState::from(p.state.as_str()));
    response.currently_active = Some(p.state == "online");
    if p.last_active_ts > 0 {
        let ago = (diplomatie_service::now_ms() - p.last_active_ts).max(0);
        response.last_active_ago = Some(Duration::from_millis(ago as u64));
    }
    response.status_msg = p.status_msg;
    Ok(response.into())
}
