//! Discovery: `/versions`, `.well-known`, capabilities (client-server spec, "Server Discovery",
//! "Capabilities Negotiation").

use std::sync::Arc;

use axum::{extract::State, response::Response};
use diplomatie_service::{rooms::create::SUPPORTED_ROOM_VERSIONS, Services};
use serde_json::{json, Map, Value};

use crate::ruma_wrapper::json_ok;

type S = State<Arc<Services>>;

/// The spec versions this server speaks, advertised to clients.
pub const SPEC_VERSIONS: &[&str] = &[
    "r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10",
    "v1.11", "v1.12", "v1.13", "v1.14", "v1.15", "v1.16", "v1.17", "v1.18", "v1.19",
];

pub async fn versions() -> Response {
    json_ok(json!({ "versions": SPEC_VERSIONS, "unstable_features": {} }))
}

pub async fn well_known_client(State(s): S) -> Response {
    json_ok(json!({ "m.homeserver": { "base_url": s.config.public_baseurl() } }))
}

/// Delegation (`m.server`): as configured, or the server name on port 443 when the name has no
/// port; a name with a port needs none (404).
pub async fn well_known_server(State(s): S) -> Result<Response, crate::error::ApiError> {
    let configured = &s.config.federation.well_known_server;
    let delegated = if !configured.is_empty() {
        configured.clone()
    } else if s.server_name().port().is_none() {
        format!("{}:443", s.server_name())
    } else {
        return Err(diplomatie_service::Error::not_found("No delegation: the server name carries its port").into());
    };
    Ok(json_ok(json!({ "m.server": delegated })))
}

pub async fn capabilities(
    State(s): S,
    headers: http::HeaderMap,
    uri: http::Uri,
) -> Result<Response, crate::error::ApiError> {
    super::account::authenticate(&s, &headers, &uri).await?;
    let available: Map<String, Value> =
        SUPPORTED_ROOM_VERSIONS.iter().map(|v| (v.to_string(), json!("stable"))).collect();
    Ok(json_ok(json!({
        "capabilities": {
            "m.room_versions": { "default": s.membership.default_room_version(), "available": available },
            "m.change_password": { "enabled": true },
            "m.set_displayname": { "enabled": true },
            "m.set_avatar_url": { "enabled": true },
            "m.3pid_changes": { "enabled": false },
            "m.get_login_token": { "enabled": false },
        }
    })))
}
