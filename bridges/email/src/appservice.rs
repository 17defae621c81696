//! The application-service API the homeserver calls (application-service spec): event
//! transactions, user and alias queries, ping, and the third-party protocol `email`.

use std::sync::Arc;

use axum::{
    extract::{Path, Query, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post, put},
    Json, Router,
};
use serde_json::{json, Value};

use diplomatie_policies::is_mail_address;

use crate::{inbound::puppet_localpart, Bridge};

fn error(status: StatusCode, errcode: &str, message: &str) -> Response {
    (status, Json(json!({ "errcode": errcode, "error": message }))).into_response()
}

/// Every request must carry the homeserver's token, in the `Authorization` header or (older
/// servers) the `access_token` query parameter.
async fn authorised(State(bridge): State<Arc<Bridge>>, request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let query = request.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "access_token").map(|(_, v)| v.into_owned())
    });
    match header.or(query) {
        None => error(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED", "No token"),
        Some(t) if t == bridge.hs_token => next.run(request).await,
        Some(_) => error(StatusCode::FORBIDDEN, "M_FORBIDDEN", "Wrong token"),
    }
}

async fn transaction(State(bridge): State<Arc<Bridge>>, Path(txn): Path<String>, body: axum::body::Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "M_NOT_JSON", "Expected JSON");
    };
    let Some(events) = body["events"].as_array() else {
        return error(StatusCode::BAD_REQUEST, "M_BAD_JSON", "A transaction carries an array of events");
    };
    match bridge.transaction(&txn, events).await {
        Ok(()) => Json(json!({})).into_response(),
        Err(e) => {
            tracing::warn!(txn, error = %e, "transaction failed; the homeserver will send it again");
            error(StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN", "Could not handle the transaction now")
        }
    }
}

async fn user(State(bridge): State<Arc<Bridge>>, Path(user): Path<String>) -> Response {
    match bridge.store.puppet(&user).await {
        Ok(Some(_)) => Json(json!({})).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "No such puppet"),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN", "Store unavailable"),
    }
}

async fn alias() -> Response {
    error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "The bridge makes no rooms on demand")
}

async fn ping() -> Response {
    Json(json!({})).into_response()
}

async fn protocol(Path(name): Path<String>) -> Response {
    if name != "email" {
        return error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "Unknown protocol");
    }
    Json(json!({
        "user_fields": ["address"],
        "location_fields": ["address"],
        "icon": "",
        "field_types": { "address": { "regexp": "[^@\\s]+@[^@\\s]+", "placeholder": "name@example.org" } },
        "instances": [{ "desc": "E-mail", "network_id": "email", "fields": {}, "instance_id": "email" }],
    }))
    .into_response()
}

/// `/thirdparty/user/email?address=...`: the puppet that stands for an address.
async fn third_party_user(
    State(bridge): State<Arc<Bridge>>,
    Path(name): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let address = query.get("address").map(|a| a.to_lowercase()).unwrap_or_default();
    if name != "email" || !is_mail_address(&address) {
        return error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "No such user");
    }
    let user = format!("@{}:{}", puppet_localpart(&bridge.config.puppet_prefix, &address), bridge.matrix.server_name);
    Json(json!([{ "userid": user, "protocol": "email", "fields": { "address": address } }])).into_response()
}

async fn unknown() -> Response {
    error(StatusCode::NOT_FOUND, "M_UNRECOGNIZED", "Unrecognized request")
}

async fn wrong_method() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "M_UNRECOGNIZED", "Method not allowed here")
}

pub fn router(bridge: Arc<Bridge>) -> Router {
    Router::new()
        .route("/_matrix/app/v1/transactions/{txn}", put(transaction))
        .route("/_matrix/app/v1/users/{user}", get(user))
        .route("/_matrix/app/v1/rooms/{alias}", get(alias))
        .route("/_matrix/app/v1/ping", post(ping))
        .route("/_matrix/app/v1/thirdparty/protocol/{name}", get(protocol))
        .route("/_matrix/app/v1/thirdparty/user/{name}", get(third_party_user))
        .fallback(unknown)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn_with_state(bridge.clone(), authorised))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
        .with_state(bridge)
}
