//! End-to-end encryption endpoints: key upload, query, claim and changes; send-to-device
//! (client-server spec, "End-to-End Encryption", "Send-to-Device messaging").

use std::{collections::BTreeMap, sync::Arc};

use axum::{extract::State, Json};
use diplomatie_service::{
    e2ee::{cross_signing::SignatureFailures, dehydrated::Dehydrated},
    sync::SyncToken,
    Error, Services,
};
use ruma::{
    api::client::{
        backup::{
            add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session, create_backup_version,
            delete_backup_keys, delete_backup_keys_for_room, delete_backup_keys_for_session, delete_backup_version,
            get_backup_info, get_backup_keys, get_backup_keys_for_room, get_backup_keys_for_session,
            get_latest_backup_info, update_backup_version, RoomKeyBackup,
        },
        dehydrated_device::{delete_dehydrated_device, get_dehydrated_device, get_events, put_dehydrated_device},
        keys::{claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures, upload_signing_keys},
        to_device::send_event_to_device,
    },
    OwnedUserId, UInt,
};
use serde_json::Value;

use crate::{
    error::ApiError,
    ruma_wrapper::{ApiResult, Ruma},
};

type S = State<Arc<Services>>;

/// A field of the raw request body, as a map of key name to key.
fn keys_field(json: &Option<Value>, field: &str) -> BTreeMap<String, Value> {
    json.as_ref()
        .and_then(|j| j.get(field))
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

pub async fn upload(State(s): S, req: Ruma<upload_keys::v3::Request>) -> ApiResult<upload_keys::v3::Response> {
    let device_keys = req.json.as_ref().and_then(|j| j.get("device_keys")).filter(|v| !v.is_null()).cloned();
    let one_time = keys_field(&req.json, "one_time_keys");
    let fallback = keys_field(&req.json, "fallback_keys");
    let counts = s.e2ee.upload_keys(req.caller(), device_keys, one_time, fallback).await?;
    Ok(upload_keys::v3::Response::new(counts).into())
}

/// ruma's `/keys/query` answer with `failures` always there (ruma leaves it out when empty).
#[derive(serde::Serialize)]
pub struct KeysAnswer {
    device_keys: BTreeMap<OwnedUserId, BTreeMap<ruma::OwnedDeviceId, ruma::serde::Raw<ruma::encryption::DeviceKeys>>>,
    master_keys: BTreeMap<OwnedUserId, ruma::serde::Raw<ruma::encryption::CrossSigningKey>>,
    self_signing_keys: BTreeMap<OwnedUserId, ruma::serde::Raw<ruma::encryption::CrossSigningKey>>,
    user_signing_keys: BTreeMap<OwnedUserId, ruma::serde::Raw<ruma::encryption::CrossSigningKey>>,
    failures: BTreeMap<String, serde_json::Value>,
}

/// `POST /keys/query`, in Synapse's shape: `failures` is always there (empty when every
/// server answered), as clients and Sytest read it.
pub async fn query(State(s): S, req: Ruma<get_keys::v3::Request>) -> Result<Json<KeysAnswer>, ApiError> {
    let requested: BTreeMap<OwnedUserId, Vec<String>> = req
        .body
        .device_keys
        .iter()
        .map(|(u, devices)| (u.clone(), devices.iter().map(|d| d.to_string()).collect()))
        .collect();
    let answer = s.e2ee.query_keys(&req.caller().user_id, &requested).await?;
    Ok(Json(KeysAnswer {
        device_keys: answer.device_keys,
        master_keys: answer.master_keys,
        self_signing_keys: answer.self_signing_keys,
        user_signing_keys: answer.user_signing_keys,
        failures: answer.failures,
    }))
}

pub async fn claim(State(s): S, req: Ruma<claim_keys::v3::Request>) -> ApiResult<claim_keys::v3::Response> {
    let requested: BTreeMap<OwnedUserId, BTreeMap<String, String>> = req
        .body
        .one_time_keys
        .iter()
        .map(|(u, devices)| (u.clone(), devices.iter().map(|(d, a)| (d.to_string(), a.to_string())).collect()))
        .collect();
    Ok(s.e2ee.claim_keys(&requested).await?.into())
}

/// Tokens of `/keys/changes` are sync tokens (or bare stream positions).
fn position(token: &str) -> Result<i64, ApiError> {
    match SyncToken::parse(token) {
        Ok(t) => Ok(t.stream),
        Err(_) => token.parse().map_err(|_| ApiError(Error::invalid_param("Invalid token"))),
    }
}

pub async fn changes(State(s): S, req: Ruma<get_key_changes::v3::Request>) -> ApiResult<get_key_changes::v3::Response> {
    let (from, to) = (position(&req.body.from)?, position(&req.body.to)?);
    let (changed, left) = s.e2ee.key_changes(&req.caller().user_id, from, to).await?;
    Ok(get_key_changes::v3::Response::new(changed, left).into())
}

pub async fn send_to_device(
    State(s): S,
    req: Ruma<send_event_to_device::v3::Request>,
) -> ApiResult<send_event_to_device::v3::Response> {
    s.e2ee.send_to_device(req.caller(), &req.body.event_type, &req.body.txn_id, &req.body.messages).await?;
    Ok(send_event_to_device::v3::Response::new().into())
}

pub async fn upload_signing_keys(
    State(s): S,
    req: Ruma<upload_signing_keys::v3::Request>,
) -> ApiResult<upload_signing_keys::v3::Response> {
    let body = req.json.clone().unwrap_or(Value::Null);
    s.e2ee.upload_signing_keys(req.caller(), req.body.auth.as_ref(), &body, &req.operation).await?;
    Ok(upload_signing_keys::v3::Response::new().into())
}

pub async fn upload_signatures(
    State(s): S,
    req: Ruma<upload_signatures::v3::Request>,
) -> Result<Json<SignatureFailures>, ApiError> {
    let mut signed: BTreeMap<OwnedUserId, BTreeMap<String, Value>> = BTreeMap::new();
    if let Some(Value::Object(users)) = &req.json {
        for (user, keys) in users {
            let user =
                OwnedUserId::try_from(user.as_str()).map_err(|_| ApiError(Error::invalid_param("Invalid user id")))?;
            let keys =
                keys.as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
            signed.insert(user, keys);
        }
    }
    Ok(Json(s.e2ee.upload_signatures(req.caller(), &signed).await?))
}

/// The body of a backup version request (algorithm and auth data), as sent.
fn body(req_json: &Option<Value>) -> Value {
    req_json.clone().unwrap_or(Value::Null)
}

pub async fn create_backup(
    State(s): S,
    req: Ruma<create_backup_version::v3::Request>,
) -> ApiResult<create_backup_version::v3::Response> {
    let version = s.e2ee.create_backup(&req.caller().user_id, &body(&req.json)).await?;
    Ok(create_backup_version::v3::Response::new(version).into())
}

pub async fn latest_backup(
    State(s): S,
    req: Ruma<get_latest_backup_info::v3::Request>,
) -> ApiResult<get_latest_backup_info::v3::Response> {
    let b = s.e2ee.backup_info(&req.caller().user_id, None).await?;
    Ok(get_latest_backup_info::v3::Response::new(b.algorithm, b.count, b.etag, b.version).into())
}

pub async fn backup(State(s): S, req: Ruma<get_backup_info::v3::Request>) -> ApiResult<get_backup_info::v3::Response> {
    let b = s.e2ee.backup_info(&req.caller().user_id, Some(&req.body.version)).await?;
    Ok(get_backup_info::v3::Response::new(b.algorithm, b.count, b.etag, b.version).into())
}

pub async fn update_backup(
    State(s): S,
    req: Ruma<update_backup_version::v3::Request>,
) -> ApiResult<update_backup_version::v3::Response> {
    s.e2ee.update_backup(&req.caller().user_id, &req.body.version, &body(&req.json)).await?;
    Ok(update_backup_version::v3::Response::new().into())
}

pub async fn delete_backup(
    State(s): S,
    req: Ruma<delete_backup_version::v3::Request>,
) -> ApiResult<delete_backup_version::v3::Response> {
    s.e2ee.delete_backup(&req.caller().user_id, &req.body.version).await?;
    Ok(delete_backup_version::v3::Response::new().into())
}

/// room -> session -> key data, from the request body at each granularity.
fn sessions_of(v: Option<&Value>) -> BTreeMap<String, Value> {
    v.and_then(Value::as_object).map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
}

pub async fn put_keys(
    State(s): S,
    req: Ruma<add_backup_keys::v3::Request>,
) -> ApiResult<add_backup_keys::v3::Response> {
    let rooms = req.json.as_ref().and_then(|j| j.get("rooms")).and_then(Value::as_object);
    let rooms = rooms
        .map(|m| m.iter().map(|(room, r)| (room.clone(), sessions_of(r.get("sessions")))).collect())
        .unwrap_or_default();
    let c = s.e2ee.put_backup_keys(&req.caller().user_id, &req.body.version, &rooms).await?;
    Ok(add_backup_keys::v3::Response::new(c.etag, UInt::new_saturating(c.count)).into())
}

pub async fn put_room_keys(
    State(s): S,
    req: Ruma<add_backup_keys_for_room::v3::Request>,
) -> ApiResult<add_backup_keys_for_room::v3::Response> {
    let sessions = sessions_of(req.json.as_ref().and_then(|j| j.get("sessions")));
    let rooms = BTreeMap::from([(req.body.room_id.to_string(), sessions)]);
    let c = s.e2ee.put_backup_keys(&req.caller().user_id, &req.body.version, &rooms).await?;
    Ok(add_backup_keys_for_room::v3::Response::new(c.etag, UInt::new_saturating(c.count)).into())
}

pub async fn put_session_key(
    State(s): S,
    req: Ruma<add_backup_keys_for_session::v3::Request>,
) -> ApiResult<add_backup_keys_for_session::v3::Response> {
    let data = body(&req.json);
    let rooms = BTreeMap::from([(req.body.room_id.to_string(), BTreeMap::from([(req.body.session_id.clone(), data)]))]);
    let c = s.e2ee.put_backup_keys(&req.caller().user_id, &req.body.version, &rooms).await?;
    Ok(add_backup_keys_for_session::v3::Response::new(c.etag, UInt::new_saturating(c.count)).into())
}

pub async fn get_keys(
    State(s): S,
    req: Ruma<get_backup_keys::v3::Request>,
) -> ApiResult<get_backup_keys::v3::Response> {
    let rooms = s.e2ee.get_backup_keys(&req.caller().user_id, &req.body.version, None, None).await?;
    Ok(get_backup_keys::v3::Response::new(rooms.into_iter().map(|(r, k)| (r, RoomKeyBackup::new(k))).collect()).into())
}

pub async fn get_room_keys(
    State(s): S,
    req: Ruma<get_backup_keys_for_room::v3::Request>,
) -> ApiResult<get_backup_keys_for_room::v3::Response> {
    let b = &req.body;
    let rooms = s.e2ee.get_backup_keys(&req.caller().user_id, &b.version, Some(b.room_id.as_str()), None).await?;
    Ok(get_backup_keys_for_room::v3::Response::new(rooms.into_values().next().unwrap_or_default()).into())
}

pub async fn get_session_key(
    State(s): S,
    req: Ruma<get_backup_keys_for_session::v3::Request>,
) -> ApiResult<get_backup_keys_for_session::v3::Response> {
    let b = &req.body;
    let rooms = s
        .e2ee
        .get_backup_keys(&req.caller().user_id, &b.version, Some(b.room_id.as_str()), Some(&b.session_id))
        .await?;
    let key = rooms.into_values().flat_map(BTreeMap::into_values).next();
    let key = key.ok_or_else(|| Error::not_found("No key for this session"))?;
    Ok(get_backup_keys_for_session::v3::Response::new(key).into())
}

pub async fn delete_keys(
    State(s): S,
    req: Ruma<delete_backup_keys::v3::Request>,
) -> ApiResult<delete_backup_keys::v3::Response> {
    let c = s.e2ee.delete_backup_keys(&req.caller().user_id, &req.body.version, None, None).await?;
    Ok(delete_backup_keys::v3::Response::new(c.etag, UInt::new_saturating(c.count)).into())
}

pub async fn delete_room_keys(
    State(s): S,
    req: Ruma<delete_backup_keys_for_room::v3::Request>,
) -> ApiResult<delete_backup_keys_for_room::v3::Response> {
    let b = &req.body;
    let c = s.e2ee.delete_backup_keys(&req.caller().user_id, &b.version, Some(b.room_id.as_str()), None).await?;
    Ok(delete_backup_keys_for_room::v3::Response::new(c.etag, UInt::new_saturating(c.count)).into())
}

pub async fn delete_session_key(
    State(s): S,
    req: Ruma<delete_backup_keys_for_session::v3::Request>,
) -> ApiResult<delete_backup_keys_for_session::v3::Response> {
    let b = &req.body;
    let v = s
        .e2ee
        .delete_backup_keys(&req.caller().user_id, &b.version, Some(b.room_id.as_str()), Some(&b.session_id))
        .await?;
    Ok(delete_backup_keys_for_session::v3::Response::new(v.etag, UInt::new_saturating(v.count)).into())
}

pub async fn put_dehydrated_device(
    State(s): S,
    req: Ruma<put_dehydrated_device::unstable::Request>,
) -> ApiResult<put_dehydrated_device::unstable::Response> {
    let raw = req.json.clone().unwrap_or(Value::Null);
    let device = Dehydrated {
        device_id: req.body.device_id.clone(),
        display_name: req.body.initial_device_display_name.clone(),
        device_data: raw.get("device_data").cloned().unwrap_or(Value::Null),
        device_keys: raw.get("device_keys").cloned().unwrap_or(Value::Null),
        one_time_keys: keys_field(&req.json, "one_time_keys"),
        fallback_keys: keys_field(&req.json, "fallback_keys"),
    };
    let device_id = s.e2ee.put_dehydrated_device(req.caller(), device).await?;
    Ok(put_dehydrated_device::unstable::Response::new(device_id).into())
}

pub async fn get_dehydrated_device(
    State(s): S,
    req: Ruma<get_dehydrated_device::unstable::Request>,
) -> ApiResult<get_dehydrated_device::unstable::Response> {
    let (device_id, device_data) = s.e2ee.dehydrated_device(&req.caller().user_id).await?;
    Ok(get_dehydrated_device::unstable::Response::new(device_id, device_data).into())
}

pub async fn delete_dehydrated_device(
    State(s): S,
    req: Ruma<delete_dehydrated_device::unstable::Request>,
) -> ApiResult<delete_dehydrated_device::unstable::Response> {
    let device_id = s.e2ee.delete_dehydrated_device(&req.caller().user_id).await?;
    Ok(delete_dehydrated_device::unstable::Response::new(device_id).into())
}

pub async fn dehydrated_device_events(
    State(s): S,
    req: Ruma<get_events::unstable::Request>,
) -> ApiResult<get_events::unstable::Response> {
    let b = &req.body;
    Ok(s.e2ee
        .dehydrated_device_events(&req.caller().user_id, b.device_id.as_str(), b.next_batch.as_deref())
        .await?
        .into())
}
