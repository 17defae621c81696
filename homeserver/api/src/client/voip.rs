//! Calls (client-server spec, "Voice over IP", and MatrixRTC): TURN credentials, the RTC
//! transports (SFUs) of the deployment, and delayed events (MSC4140), with which MatrixRTC
//! clients leave a call they lost.

use std::{sync::Arc, time::Duration};

use axum::{extract::State, response::IntoResponse, Json};
use diplomatie_service::{
    delayed::{Action, Delayed, Filter, Schedule},
    Error, Services,
};

use ruma::{
    api::{
        client::{
            delayed_events::{
                get_all_delayed_events, get_delayed_event, send_delayed_event, update_delayed_event, DelayedEventData,
            },
            rtc::{transports, RtcTransport},
            voip::get_turn_server_info,
        },
        error::StandardErrorBody,
    },
    serde::Raw,
    MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, UInt,
};
use serde::Serialize;

use crate::{
    error::ApiError,
    ruma_wrapper::{query_param, ApiResult, Ruma, RumaResponse},
};

type S = State<Arc<Services>>;

/// What `/voip/turnServer` answers: the credentials, or nothing (`{}`, as Synapse answers)
/// when no TURN server is configured.
#[derive(Serialize, Default)]
pub struct TurnAnswer {
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uris: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<u64>,
}

/// `GET /voip/turnServer`
pub async fn turn_server(State(s): S, req: Ruma<get_turn_server_info::v3::Request>) -> Json<TurnAnswer> {
    let caller = req.caller();
    let Some(c) = diplomatie_service::voip::turn_credentials(&s.config.voip, &caller.user_id, caller.is_guest) else {
        return Json(TurnAnswer::default());
    };
    Json(TurnAnswer {
        username: Some(c.username),
        password: Some(c.password),
        uris: Some(c.uris),
        ttl: Some(c.ttl.as_secs()),
    })
}

/// The foci of the configuration, as clients read them.
pub fn rtc_foci(s: &Services) -> Vec<RtcTransport> {
    s.config
        .voip
        .rtc_foci
        .iter()
        .filter_map(|f| match serde_json::from_value::<RtcTransport>(f.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(focus = %f, error = %e, "voip.rtc_foci: an entry that is not an RTC transport");
                None
            }
        })
        .collect()
}

/// `GET /_matrix/client/unstable/org.matrix.msc4143/rtc/transports`
pub async fn rtc_transports(State(s): S, _req: Ruma<transports::v1::Request>) -> ApiResult<transports::v1::Response> {
    Ok(transports::v1::Response::new(rtc_foci(&s)).into())
}

/// `PUT /_matrix/client/unstable/org.matrix.msc4140/rooms/{roomId}/delayed_event/{eventType}/{txnId}`
pub async fn send_delayed(
    State(s): S,
    req: Ruma<send_delayed_event::unstable::Request>,
) -> ApiResult<send_delayed_event::unstable::Response> {
    let caller = req.caller().clone();
    let b = req.body;
    let content = serde_json::from_str(b.content.json().get()).map_err(|e| Error::bad_json(e.to_string()))?;
    let event_type = b.event_type.to_string();
    let schedule = Schedule {
        room_id: &b.room_id,
        event_type: &event_type,
        state_key: b.state_key.as_deref(),
        content,
        delay_ms: b.delay.as_millis() as u64,
        txn_id: Some(b.txn_id.as_str()),
    };
    let id = s.delayed.schedule(&caller.user_id, &caller.device_id, schedule).await?;
    Ok(send_delayed_event::unstable::Response::new(id).into())
}

/// The delay a deprecated delayed send asks for (`?org.matrix.msc4140.delay=` on `/send` and
/// `/state`), when it asks for one.
pub fn asked_delay(uri: &http::Uri) -> Result<Option<u64>, ApiError> {
    match query_param(uri, "org.matrix.msc4140.delay") {
        None => Ok(None),
        Some(ms) => Ok(Some(ms.parse().map_err(|_| Error::invalid_param("org.matrix.msc4140.delay: milliseconds"))?)),
    }
}

/// The `{"delay_id"}` answer of a delayed send.
pub fn delayed_answer(delay_id: String) -> axum::response::Response {
    RumaResponse(send_delayed_event::unstable::Response::new(delay_id)).into_response()
}

/// `POST /_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delayId}/{action}`:
/// the `delay_id` is the capability, no access token is needed.
pub async fn update_by_path(
    State(s): S,
    req: Ruma<update_delayed_event::unstable_v2::Request>,
) -> ApiResult<update_delayed_event::unstable_v2::Response> {
    let action = Action::parse(req.body.action.as_str())?;
    s.delayed.update(&req.body.delay_id, action, None).await?;
    Ok(update_delayed_event::unstable_v2::Response::new().into())
}

/// `POST /_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delayId}` with the action
/// in the body (the MSC's first version), by the user who scheduled it.
pub async fn update_by_body(
    State(s): S,
    req: Ruma<update_delayed_event::unstable_v1::Request>,
) -> ApiResult<update_delayed_event::unstable_v1::Response> {
    let action = Action::parse(req.body.action.as_str())?;
    s.delayed.update(&req.body.delay_id, action, Some(&req.caller().user_id)).await?;
    Ok(update_delayed_event::unstable_v1::Response::new().into())
}

/// `GET /_matrix/client/unstable/org.matrix.msc4140/delayed_events`, with the `status`,
/// `room_id` and `type` filters of the MSC.
pub async fn list(
    State(s): S,
    uri: http::Uri,
    req: Ruma<get_all_delayed_events::unstable::Request>,
) -> ApiResult<get_all_delayed_events::unstable::Response> {
    let finalised = match query_param(&uri, "status").as_deref() {
        None => None,
        Some("scheduled") => Some(false),
        Some("finalised") => Some(true),
        Some(other) => return Err(Error::invalid_param(format!("status {other}: scheduled or finalised")).into()),
    };
    let room_id = query_param(&uri, "room_id");
    let event_type = query_param(&uri, "type");
    let filter = Filter { finalised, room_id: room_id.as_deref(), event_type: event_type.as_deref() };
    let events = s.delayed.list(&req.caller().user_id, filter).await?;
    let events = events.into_iter().map(data).collect::<Result<Vec<_>, _>>()?;
    Ok(get_all_delayed_events::unstable::Response::new(events).into())
}

/// `GET /_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delayId}`
pub async fn get(
    State(s): S,
    req: Ruma<get_delayed_event::unstable::Request>,
) -> ApiResult<get_delayed_event::unstable::Response> {
    let d = s.delayed.get(&req.caller().user_id, &req.body.delay_id).await?;
    Ok(get_delayed_event::unstable::Response::new(data(d)?).into())
}

fn ts(ms: i64) -> MilliSecondsSinceUnixEpoch {
    MilliSecondsSinceUnixEpoch(UInt::new(ms.max(0) as u64).unwrap_or_default())
}

/// A stored delayed event as the MSC describes it.
fn data(d: Delayed) -> Result<DelayedEventData, ApiError> {
    let room_id = OwnedRoomId::try_from(d.room_id).map_err(diplomatie_service::internal!())?;
    let content = Raw::from_json_string(d.content).map_err(diplomatie_service::internal!())?;
    let mut out = DelayedEventData::new(
        d.delay_id,
        room_id,
        d.event_type.into(),
        d.state_key,
        content,
        Duration::from_millis(d.delay_ms.max(0) as u64),
        ts(d.running_since),
    );
    out.event_id = d.event_id.and_then(|e| OwnedEventId::try_from(e).ok());
    out.error = d.error.and_then(|e| serde_json::from_str::<StandardErrorBody>(&e).ok());
    out.finalized_ts = d.finalised_ts.map(ts);
    Ok(out)
}
