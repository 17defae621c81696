//! End-to-end encryption endpoints: key upload, query, claim and changes; send-to-device
//! (client-server spec, "End-to-End Encryption", "Send-to-Device messaging").

use std::{collections::BTreeMap, sync::Arc};

use axum::{extract::State, response::Response};
use diplomatie_service::{sync::SyncToken, Error, Services};
use ruma::{
    api::client::{
        keys::{claim_keys, get_key_changes, get_keys, upload_keys},
        to_device::send_event_to_device,
    },
    OwnedUserId,
};
use serde_json::{json, Value};

use crate::{
    error::ApiError,
    ruma_wrapper::{json_ok, ApiResult, Ruma},
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

pub async fn upload(State(s): S, req: Ruma<upload_keys::v3::Request>) -> Result<Response, ApiError> {
    let device_keys = req.json.as_ref().and_then(|j| j.get("device_keys")).filter(|v| !v.is_null()).cloned();
    let one_time = keys_field(&req.json, "one_time_keys");
    let fallback = keys_field(&req.json, "fallback_keys");
    let counts = s.upload_keys(req.caller(), device_keys, one_time, fallback).await?;
    Ok(json_ok(json!({ "one_time_key_counts": counts })))
}

pub async fn query(State(s): S, req: Ruma<get_keys::v3::Request>) -> Result<Response, ApiError> {
    let requested: BTreeMap<OwnedUserId, Vec<String>> = req
        .body
        .device_keys
        .iter()
        .map(|(u, devices)| (u.clone(), devices.iter().map(|d| d.to_string()).collect()))
        .collect();
    Ok(json_ok(s.query_keys(&requested).await?))
}

pub async fn claim(State(s): S, req: Ruma<claim_keys::v3::Request>) -> Result<Response, ApiError> {
    let requested: BTreeMap<OwnedUserId, BTreeMap<String, String>> = req
        .body
        .one_time_keys
        .iter()
        .map(|(u, devices)| (u.clone(), devices.iter().map(|(d, a)| (d.to_string(), a.to_string())).collect()))
        .collect();
    Ok(json_ok(s.claim_keys(&requested).await?))
}

/// Tokens of `/keys/changes` are sync tokens (or bare stream positions).
fn position(token: &str) -> Result<i64, ApiError> {
    match SyncToken::parse(token) {
        Ok(t) => Ok(t.stream),
        Err(_) => token.parse().map_err(|_| ApiError(Error::invalid_param("Invalid token"))),
    }
}

pub async fn changes(State(s): S, req: Ruma<get_key_changes::v3::Request>) -> Result<Response, ApiError> {
    let (from, to) = (position(&req.body.from)?, position(&req.body.to)?);
    let changed = s.key_changes(&req.caller().user_id, from, to).await?;
    Ok(json_ok(json!({ "changed": changed, "left": [] })))
}

pub async fn send_to_device(
    State(s): S,
    req: Ruma<send_event_to_device::v3::Request>,
) -> ApiResult<send_event_to_device::v3::Response> {
    let messages: BTreeMap<OwnedUserId, BTreeMap<String, Value>> = req
        .body
        .messages
        .iter()
        .map(|(u, devices)| {
            let devices = devices
                .iter()
                .map(|(d, content)| (d.to_string(), serde_json::from_str(content.json().get()).unwrap_or(Value::Null)))
                .collect();
            (u.clone(), devices)
        })
        .collect();
    let kind = req.body.event_type.to_string();
    s.send_to_device(req.caller(), &kind, req.body.txn_id.as_str(), &messages).await?;
    Ok(send_event_to_device::v3::Response::new().into())
}
