//! Synapse-compatible admin endpoints, so that existing tools (`register_new_matrix_user`) work.

use std::sync::Arc;

use axum::{extract::State, response::Response};
use diplomatie_service::{Error, Services};
use ruma::api::error::ErrorKind;
use serde::Deserialize;
use serde_json::json;

use crate::{error::ApiError, ruma_wrapper::json_ok};

type S = State<Arc<Services>>;

/// `GET /_synapse/admin/v1/register`: a nonce for the next registration.
pub async fn register_nonce(State(s): S) -> Result<Response, ApiError> {
    if s.config.registration.shared_secret.is_empty() {
        return Err(Error::forbidden("Shared secret registration is not enabled").into());
    }
    Ok(json_ok(json!({ "nonce": s.admin_nonces.issue() })))
}

#[derive(Deserialize)]
pub struct SharedSecretRegistration {
    nonce: String,
    username: String,
    password: String,
    #[serde(default)]
    displayname: Option<String>,
    #[serde(default)]
    admin: bool,
    mac: String,
}

/// `POST /_synapse/admin/v1/register`: creates a user when the HMAC matches the shared secret.
pub async fn register(State(s): S, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let req: SharedSecretRegistration = serde_json::from_slice(&body).map_err(|e| {
        let kind = if serde_json::from_slice::<serde_json::Value>(&body).is_err() {
            ErrorKind::NotJson
        } else if e.to_string().starts_with("missing field") {
            ErrorKind::MissingParam
        } else {
            ErrorKind::BadJson
        };
        Error::new(kind, e.to_string())
    })?;
    s.check_shared_secret_mac(&req.nonce, &req.username, &req.password, req.admin, &req.mac)?;
    if !s.admin_nonces.take(&req.nonce) {
        return Err(Error::new(ErrorKind::Unknown, "Unrecognised nonce").into());
    }
    let user_id = s
        .create_account(Some(&req.username.to_lowercase()), Some(&req.password), req.admin, req.displayname.as_deref())
        .await?;
    let session = s.open_session(&user_id, None, None, false).await?;
    Ok(json_ok(json!({
        "access_token": session.access_token,
        "user_id": session.user_id,
        "home_server": s.server_name(),
        "device_id": session.device_id,
    })))
}
