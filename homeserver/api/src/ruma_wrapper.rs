//! The bridge between axum and ruma: a request extractor that parses the typed ruma request and
//! authenticates its caller, and a response type that serialises the typed ruma response.

use std::{any::TypeId, net::SocketAddr, sync::Arc};

use axum::{
    body::Body,
    extract::{ConnectInfo, FromRequest, RawPathParams, Request},
    response::{IntoResponse, Response},
};
use bytes::BytesMut;
use diplomatie_service::{accounts::Caller, Error, Services};
use http_body_util::BodyExt;
use ruma::api::{
    auth_scheme::{AccessToken, AccessTokenOptional, AppserviceToken, AppserviceTokenOptional},
    error::{DeserializationError, ErrorKind, FromHttpRequestError, LimitExceededErrorData},
    federation::authentication::ServerSignatures,
    IncomingRequest, IncomingRequestExt, Metadata, OutgoingResponse, OutgoingResponseExt,
};
use serde_json::Value;

use crate::{error::ApiError, limits::Limits};

/// A typed ruma request with its authenticated caller.
pub struct Ruma<T> {
    pub body: T,
    /// The caller, for endpoints that take an access token.
    pub caller: Option<Caller>,
    /// The request body as JSON, for the fields ruma's types do not keep.
    pub json: Option<Value>,
    pub ip: Option<String>,
    /// The server that sent a federation request (its `X-Matrix` signature checked).
    pub origin: Option<ruma::OwnedServerName>,
    /// A media upload's file, written to disk as it arrived (ruma's request then carries an
    /// empty `file`), with its place among the uploads in progress.
    pub upload: Option<(diplomatie_service::media::Spooled, crate::limits::UploadSlot)>,
    /// The request's method and path, which binds a user-interactive authentication session.
    pub operation: String,
}

impl<T> Ruma<T> {
    /// The server that sent a federation request.
    pub fn origin(&self) -> &ruma::ServerName {
        self.origin.as_deref().expect("the extractor authenticates federation requests")
    }

    /// The caller of an endpoint that requires authentication.
    pub fn caller(&self) -> &Caller {
        self.caller.as_ref().expect("the extractor authenticates endpoints that require it")
    }
}

/// The access token of a request: the `Authorization` header, or the deprecated query parameter.
pub fn access_token(parts: &http::request::Parts) -> Option<String> {
    if let Some(h) = parts.headers.get(http::header::AUTHORIZATION).and_then(|h| h.to_str().ok()) {
        return h.strip_prefix("Bearer ").map(|t| t.trim().to_owned());
    }
    query_param(&parts.uri, "access_token")
}

/// A query parameter of the request, decoded.
pub fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    let query = uri.query()?;
    url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// The caller a token stands for: an application service's token acts as the user its
/// `user_id` parameter names (on the device `device_id` names, MSC3202), any other is a user's.
pub async fn caller_of(services: &Services, parts: &http::request::Parts, token: &str) -> Result<Caller, ApiError> {
    let user_id = query_param(&parts.uri, "user_id");
    let device_id =
        query_param(&parts.uri, "org.matrix.msc3202.device_id").or_else(|| query_param(&parts.uri, "device_id"));
    Ok(services.accounts.authenticate_request(token, user_id.as_deref(), device_id.as_deref()).await?)
}

/// What every request passes once its caller is known, typed or not: a guest only on the
/// guest endpoints, and the rate limits (the spec's rate-limited endpoints, and every change an
/// authenticated user makes, as Synapse's rc_message does).
pub fn admit(
    services: &Services,
    caller: Option<&Caller>,
    parts: &http::request::Parts,
    rate_limited: bool,
) -> Result<(), ApiError> {
    if caller.is_some_and(|c| c.is_guest) && !guest_may(parts) {
        return Err(ApiError(Error::new(ErrorKind::GuestAccessForbidden, "Guests may not use this endpoint")));
    }
    if let Some(caller) = caller.filter(|c| c.appservice.is_none()) {
        let ip = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let agent = parts.headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok());
        services.accounts.note_seen(caller, ip, agent);
    }
    // An application service's own user is never held to the limits, nor its users when its
    // registration says `rate_limited: false`.
    let unlimited = caller.is_some_and(|c| {
        c.appservice
            .as_deref()
            .and_then(|id| services.registrations.by_id(id))
            .is_some_and(|service| !service.rate_limited(c.user_id.as_str()))
    });
    let mutates = matches!(parts.method, http::Method::POST | http::Method::PUT | http::Method::DELETE);
    if !unlimited && (rate_limited || (caller.is_some() && mutates)) {
        let ip = || parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
        let key = caller.map(|c| c.user_id.to_string()).or_else(ip).unwrap_or_default();
        services.ratelimiter.check(&key, caller.is_none()).map_err(|ms| {
            let mut data = LimitExceededErrorData::new();
            data.retry_after = Some(ruma::api::error::RetryAfter::Delay(std::time::Duration::from_millis(ms)));
            ApiError(Error::new(ErrorKind::LimitExceeded(data), "Too many requests"))
        })?;
    }
    Ok(())
}

/// Authentication for the handlers that do not take a typed ruma request, with the same
/// admission as typed ones.
pub async fn authenticate(services: &Services, parts: &http::request::Parts) -> Result<Caller, ApiError> {
    let token =
        access_token(parts).ok_or_else(|| ApiError(Error::new(ErrorKind::MissingToken, "Missing access token")))?;
    let caller = caller_of(services, parts, &token).await?;
    admit(services, Some(&caller), parts, false)?;
    Ok(caller)
}

/// The JSON object body of a handler that does not take a typed ruma request, checked as
/// typed ones are: `M_NOT_JSON` when it is not JSON, `M_BAD_JSON` when it is no object or holds
/// a NUL character.
pub fn object_body(bytes: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError(Error::new(ErrorKind::NotJson, format!("Body is not JSON: {e}"))))?;
    if !value.is_object() {
        return Err(ApiError(Error::bad_json("Body must be a JSON object")));
    }
    if let Some(path) = nul_in(&value) {
        return Err(ApiError(Error::bad_json(format!("A NUL character is not allowed (at {path})"))));
    }
    Ok(value)
}

/// A hand-read request's head and body (limited and timed by the `limits` middleware).
pub async fn read_limited_body(request: Request) -> Result<(http::request::Parts, bytes::Bytes), ApiError> {
    let (parts, body) = request.into_parts();
    let bytes = body.collect().await.map_err(|e| crate::limits::body_error(&e))?.to_bytes();
    Ok((parts, bytes))
}

/// The server a hand-read federation request comes from, once its `X-Matrix` signature over
/// the whole request is checked (as the extractor does for typed requests).
pub async fn server_origin(
    services: &Services,
    parts: &http::request::Parts,
    bytes: &[u8],
) -> Result<ruma::OwnedServerName, ApiError> {
    let signer = services.transport.request_signer(&parts.headers).await.map_err(ApiError)?;
    verify_signed(services, parts, bytes, signer)
}

/// Checks a request's signature over its method, path, headers and body.
fn verify_signed(
    services: &Services,
    parts: &http::request::Parts,
    bytes: &[u8],
    signer: diplomatie_service::federation::keys::RequestSigner,
) -> Result<ruma::OwnedServerName, ApiError> {
    let mut signed = http::Request::builder().method(parts.method.clone()).uri(parts.uri.clone());
    if let Some(h) = signed.headers_mut() {
        *h = parts.headers.clone();
    }
    let signed = signed.body(bytes).map_err(diplomatie_service::internal!())?;
    services.transport.verify_request(&signed, signer).map_err(ApiError)
}

/// Whether a guest may call this endpoint: the spec's list ("Guest access"), plus what a
/// client needs around it (filters, account data, push rules read, logout), as Synapse allows.
fn guest_may(parts: &http::request::Parts) -> bool {
    let method = &parts.method;
    let Some(matched) = parts.extensions.get::<axum::extract::MatchedPath>() else { return false };
    let path = matched.as_str();
    let Some(rest) = path.strip_prefix("/_matrix/client/") else { return false };
    let endpoint = rest.split_once('/').map_or("", |(_, e)| e);
    use http::Method as M;
    let allowed: &[(M, &str)] = &[
        (M::GET, "rooms/{room_id}/state"),
        (M::GET, "rooms/{room_id}/context/{event_id}"),
        (M::GET, "rooms/{room_id}/event/{event_id}"),
        (M::GET, "rooms/{room_id}/state/{event_type}/{state_key}"),
        (M::GET, "rooms/{room_id}/state/{event_type}"),
        (M::GET, "rooms/{room_id}/messages"),
        (M::GET, "rooms/{room_id}/members"),
        (M::GET, "rooms/{room_id}/joined_members"),
        (M::GET, "rooms/{room_id}/initialSync"),
        (M::GET, "sync"),
        (M::GET, "events"),
        (M::GET, "profile/{user_id}"),
        (M::GET, "profile/{user_id}/{field}"),
        (M::PUT, "profile/{user_id}/{field}"),
        (M::GET, "presence/{user_id}/status"),
        (M::PUT, "presence/{user_id}/status"),
        (M::POST, "rooms/{room_id}/join"),
        (M::POST, "join/{room_id_or_alias}"),
        (M::POST, "rooms/{room_id}/leave"),
        (M::PUT, "rooms/{room_id}/send/{event_type}/{txn_id}"),
        (M::POST, "rooms/{room_id}/send/{event_type}"),
        (M::PUT, "sendToDevice/{event_type}/{txn_id}"),
        (M::GET, "devices"),
        (M::GET, "devices/{device_id}"),
        (M::PUT, "devices/{device_id}"),
        (M::POST, "keys/query"),
        (M::POST, "keys/upload"),
        (M::POST, "keys/claim"),
        (M::GET, "keys/changes"),
        (M::PUT, "rooms/{room_id}/typing/{user_id}"),
        (M::POST, "rooms/{room_id}/receipt/{receipt_type}/{event_id}"),
        (M::POST, "rooms/{room_id}/read_markers"),
        (M::GET, "voip/turnServer"),
        (M::GET, "account/whoami"),
        (M::POST, "logout"),
        (M::POST, "user/{user_id}/filter"),
        (M::GET, "user/{user_id}/filter/{filter_id}"),
        (M::GET, "user/{user_id}/account_data/{event_type}"),
        (M::PUT, "user/{user_id}/account_data/{event_type}"),
        (M::GET, "user/{user_id}/rooms/{room_id}/account_data/{event_type}"),
        (M::PUT, "user/{user_id}/rooms/{room_id}/account_data/{event_type}"),
        (M::GET, "pushrules/"),
        (M::GET, "pushrules"),
        (M::GET, "capabilities"),
    ];
    if !allowed.iter().any(|(m, e)| m == method && *e == endpoint) {
        return false;
    }
    // Of events, guests send messages only.
    !endpoint.starts_with("rooms/{room_id}/send/") || parts.uri.path().contains("/send/m.room.message")
}

/// Maps a ruma parse failure to the spec's error code.
fn parse_error(e: FromHttpRequestError) -> ApiError {
    let (kind, message) = match e {
        FromHttpRequestError::Deserialization(DeserializationError::Json(e)) => {
            let text = e.to_string();
            if text.starts_with("missing field") {
                (ErrorKind::MissingParam, text)
            } else {
                (ErrorKind::BadJson, text)
            }
        }
        FromHttpRequestError::Deserialization(DeserializationError::Query(e)) => {
            let text = e.to_string();
            if text.starts_with("missing field") {
                (ErrorKind::MissingParam, text)
            } else {
                (ErrorKind::InvalidParam, text)
            }
        }
        FromHttpRequestError::Deserialization(DeserializationError::Ident(e)) => {
            (ErrorKind::InvalidParam, e.to_string())
        }
        FromHttpRequestError::MethodMismatch { .. } => (ErrorKind::Unrecognized, "Method not allowed".to_owned()),
        other => (ErrorKind::BadJson, other.to_string()),
    };
    ApiError(Error::Matrix(kind, message))
}

impl<T> FromRequest<Arc<Services>> for Ruma<T>
where
    T: IncomingRequest + Send + 'static,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, services: &Arc<Services>) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let path_params: Vec<String> = {
            use axum::extract::FromRequestParts;
            let params = RawPathParams::from_request_parts(&mut parts, services)
                .await
                .map_err(|_| ApiError(Error::unrecognized("Bad path")))?;
            let mut args: Vec<String> = params.iter().map(|(_, v)| v.to_owned()).collect();
            // `/state/{eventType}` and `/state/{eventType}/` stand for an empty state key.
            let matched = parts.extensions.get::<axum::extract::MatchedPath>().map(|m| m.as_str().to_owned());
            if matched.is_some_and(|m| m.ends_with("/state/{event_type}") || m.ends_with("/state/{event_type}/")) {
                args.push(String::new());
            }
            args
        };
        let ip = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());

        // Authenticate before reading the body.
        let token = access_token(&parts);
        let auth = TypeId::of::<T::Authentication>();
        let caller = if auth == TypeId::of::<AccessToken>() || auth == TypeId::of::<AppserviceToken>() {
            let token = token.ok_or_else(|| ApiError(Error::new(ErrorKind::MissingToken, "Missing access token")))?;
            Some(caller_of(services, &parts, &token).await?)
        } else if auth == TypeId::of::<AccessTokenOptional>() {
            match token {
                Some(t) => Some(caller_of(services, &parts, &t).await?),
                None => None,
            }
        } else if auth == TypeId::of::<AppserviceTokenOptional>() {
            // Registration and login: only an application service's token means anything.
            match token.filter(|t| services.registrations.by_token(t).is_some()) {
                Some(t) => Some(caller_of(services, &parts, &t).await?),
                None => None,
            }
        } else {
            None
        };

        // The request's span names who asks, and about which room.
        let span = tracing::Span::current();
        if let Some(c) = &caller {
            span.record("user", c.user_id.as_str());
        }
        if let Some(room) = path_params.iter().find(|p| p.starts_with('!')) {
            span.record("room", room.as_str());
        }

        admit(services, caller.as_ref(), &parts, T::RATE_LIMITED)?;

        // Federation: the origin and its key are checked before the body is read; the
        // signature over the whole request after.
        let signer = if auth == TypeId::of::<ServerSignatures>() {
            Some(services.transport.request_signer(&parts.headers).await.map_err(ApiError)?)
        } else {
            None
        };

        let raw = has_raw_body::<T>();
        let mut upload = None;
        let bytes = if raw {
            // A media upload goes to disk as it arrives, within the user's and the server's
            // number of uploads in progress.
            let user = &caller.as_ref().ok_or_else(diplomatie_service::internal!("uploads need a caller"))?.user_id;
            let limits = parts
                .extensions
                .get::<Arc<Limits>>()
                .cloned()
                .ok_or_else(diplomatie_service::internal!("the limits middleware runs first"))?;
            let slot = limits.upload_slot(services, user)?;
            use futures::StreamExt;
            let chunks = body.into_data_stream().map(|r| r.map_err(|e| crate::limits::body_error(&e).0));
            let spooled = services.media.spool_upload(chunks).await.map_err(ApiError)?;
            upload = Some((spooled, slot));
            bytes::Bytes::new()
        } else {
            // Limited and timed by the `limits` middleware, which every route passes.
            body.collect().await.map_err(|e| crate::limits::body_error(&e))?.to_bytes()
        };
        let json = if bytes.is_empty() || raw {
            None
        } else {
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(v) => Some(v),
                Err(_) if T::METHOD == http::Method::GET => None,
                Err(e) => return Err(ApiError(Error::new(ErrorKind::NotJson, format!("Body is not JSON: {e}")))),
            }
        };
        if matches!(T::METHOD, http::Method::POST | http::Method::PUT) && json.as_ref().is_some_and(|j| !j.is_object())
        {
            return Err(ApiError(Error::bad_json("Body must be a JSON object")));
        }
        // ruma's login body panics without a `type` (ruma 0.17): the spec's error instead.
        if TypeId::of::<T>() == TypeId::of::<ruma::api::client::session::login::v3::Request>() {
            match json.as_ref().and_then(|j| j.get("type")) {
                None => return Err(ApiError(Error::new(ErrorKind::MissingParam, "Missing field `type`"))),
                Some(Value::String(_)) => {}
                Some(_) => return Err(ApiError(Error::bad_json("`type` must be a string"))),
            }
        }
        // No identifier nor text may hold a NUL (PostgreSQL cannot store one; SQLite would
        // keep what the other refuses). Other servers' events are checked one by one instead.
        if signer.is_none() {
            if let Some(path) = json.as_ref().and_then(nul_in) {
                return Err(ApiError(Error::bad_json(format!("A NUL character is not allowed (at {path})"))));
            }
            if path_params.iter().any(|p| p.contains('\0')) {
                return Err(ApiError(Error::invalid_param("A NUL character is not allowed in the path")));
            }
        }
        // A password stage in the deprecated form (`user` beside the password, before the
        // spec's `identifier`), as older clients and Sytest send it: the spec's form for ruma.
        let legacy_auth = json.as_ref().filter(|_| signer.is_none()).and_then(legacy_password_auth);
        let body_bytes: &[u8] = match &legacy_auth {
            Some(rewritten) => rewritten,
            None if bytes.is_empty() && !raw && matches!(T::METHOD, http::Method::POST | http::Method::PUT) => b"{}",
            None => &bytes,
        };
        let origin = match signer {
            Some(signer) => Some(verify_signed(services, &parts, &bytes, signer)?),
            None => None,
        };
        let operation = format!("{} {}", parts.method, parts.uri.path());
        let http_req = http::Request::from_parts(parts, body_bytes);
        let args: Vec<&str> = path_params.iter().map(String::as_str).collect();
        // ruma's parsers are not ours: one that panics on some input (as its login body did on
        // a body without `type`) must refuse the request, not take the worker down.
        let parsed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| T::try_from_http_request(http_req, &args)));
        let body = match parsed {
            Ok(parsed) => parsed.map_err(parse_error)?,
            Err(_) => return Err(ApiError(Error::bad_json("The request could not be parsed"))),
        };
        Ok(Ruma { body, caller, json, ip, origin, upload, operation })
    }
}

/// Where in `value` a string (or an object's key) holds a NUL character, if one does.
pub fn nul_in(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if s.contains('\0') => Some("a string".to_owned()),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| nul_in(v).map(|p| format!("[{i}] {p}"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                return Some("a key".to_owned());
            }
            nul_in(v).map(|p| format!("{k}: {p}"))
        }),
        _ => None,
    }
}

/// Whether `T`'s body is a file rather than JSON (media uploads): it is neither parsed as JSON
/// nor held to the JSON size limit, but to the media one.
fn has_raw_body<T: 'static>() -> bool {
    use ruma::api::client::media::{create_content, create_content_async};
    let t = TypeId::of::<T>();
    t == TypeId::of::<create_content::v3::Request>() || t == TypeId::of::<create_content_async::v3::Request>()
}

/// A body whose `auth` is a password stage naming its user the deprecated way (`user`, no
/// `identifier`), rewritten with the spec's `identifier`; `None` for every other body.
fn legacy_password_auth(json: &Value) -> Option<Vec<u8>> {
    let auth = json.get("auth")?.as_object()?;
    if auth.get("type")?.as_str()? != "m.login.password" || auth.contains_key("identifier") {
        return None;
    }
    let user = auth.get("user")?.as_str()?;
    let mut json = json.clone();
    json["auth"]["identifier"] = serde_json::json!({ "type": "m.id.user", "user": user });
    serde_json::to_vec(&json).ok()
}

/// A typed ruma response.
pub struct RumaResponse<T>(pub T);

impl<T: OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<BytesMut>() {
            Ok(res) => res.map(|b| Body::from(b.freeze())).into_response(),
            Err(e) => {
                tracing::error!(error = %e, "could not serialise a response");
                ApiError(Error::Internal).into_response()
            }
        }
    }
}

impl<T> From<T> for RumaResponse<T> {
    fn from(t: T) -> Self {
        RumaResponse(t)
    }
}

pub type ApiResult<T> = Result<RumaResponse<T>, ApiError>;

/// Registers `handler` on every path the spec gives `T` (all versions, stable and unstable).
pub fn route<T, H, X>(router: axum::Router<Arc<Services>>, handler: H) -> axum::Router<Arc<Services>>
where
    T: Metadata,
    H: axum::handler::Handler<X, Arc<Services>>,
    X: 'static,
{
    use ruma::api::path_builder::PathBuilder;
    let method = T::METHOD;
    let mut router = router;
    let filter = axum::routing::MethodFilter::try_from(method).expect("standard method");
    for path in T::PATH_BUILDER.all_paths() {
        router = router.route(path, axum::routing::on(filter, handler.clone()));
        // State keys may be empty: the path then ends at the event type, with or without `/`.
        if let Some(short) = path.strip_suffix("/{state_key}") {
            router = router.route(short, axum::routing::on(filter, handler.clone()));
            router = router.route(&format!("{short}/"), axum::routing::on(filter, handler.clone()));
        }
    }
    router
}
