//! The HTTP face of service errors: the only place that knows which status each errcode has.

use axum::response::{IntoResponse, Response};
use diplomatie_service::Error;
use http::StatusCode;
use ruma::api::error::ErrorKind;

/// A service error on its way to the client.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

/// The status the spec gives each error code.
pub fn status_of(kind: &ErrorKind) -> StatusCode {
    use ErrorKind::*;
    match kind {
        Forbidden
        | UserDeactivated
        | GuestAccessForbidden
        | ServerNotTrusted
        | ThreepidDenied
        | CannotOverwriteMedia
        | WrongRoomKeysVersion(_)
        | UserLocked
        | UserSuspended => StatusCode::FORBIDDEN,
        NotFound | Unrecognized => StatusCode::NOT_FOUND,
        UnknownToken(_) | MissingToken | Unauthorized => StatusCode::UNAUTHORIZED,
        LimitExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
        TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        NotYetUploaded | ConnectionTimeout => StatusCode::GATEWAY_TIMEOUT,
        ConnectionFailed | BadStatus(_) => StatusCode::BAD_GATEWAY,
        Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self.0 {
            Error::Uiaa(info) => {
                // `completed` is listed even when empty, as Synapse does and Sytest expects.
                let mut body = serde_json::to_value(&info).unwrap_or_default();
                if let Some(o) = body.as_object_mut() {
                    o.entry("completed").or_insert(serde_json::json!([]));
                }
                (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
            }
            Error::Internal => {
                let body = serde_json::json!({ "errcode": "M_UNKNOWN", "error": "Internal server error" });
                (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response()
            }
            Error::Remote(message) => {
                let body = serde_json::json!({ "errcode": "M_UNKNOWN", "error": message });
                (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response()
            }
            Error::Conflict(message) => {
                let body = ruma::api::error::StandardErrorBody::new(ErrorKind::Unknown, message);
                (StatusCode::CONFLICT, axum::Json(body)).into_response()
            }
            Error::MaxDelayExceeded { max_delay } => {
                let body = serde_json::json!({
                    "errcode": "M_MAX_DELAY_EXCEEDED",
                    "error": "The requested delay exceeds the allowed maximum.",
                    "max_delay": max_delay,
                });
                (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
            }
            Error::MlsWrongEpoch { current, got } => {
                let body = serde_json::json!({
                    "errcode": "FR_DIPLOMATIE_MLS_WRONG_EPOCH",
                    "error": format!("The group is at epoch {current}, not {got}: fetch the commits since and try again"),
                    "current_epoch": current,
                });
                (StatusCode::CONFLICT, axum::Json(body)).into_response()
            }
            Error::Matrix(kind, message) => {
                let status = match kind {
                    // M_UNKNOWN for a refused request that is not the server's fault.
                    ErrorKind::Unknown => StatusCode::BAD_REQUEST,
                    ref k => status_of(k),
                };
                // A rate-limited client is told when to come back in the header too (RFC 9110),
                // which HTTP libraries read without knowing Matrix.
                let retry_after = match &kind {
                    ErrorKind::LimitExceeded(data) => match &data.retry_after {
                        Some(ruma::api::error::RetryAfter::Delay(d)) => Some(d.as_millis().div_ceil(1000).max(1)),
                        _ => Some(1),
                    },
                    _ => None,
                };
                let body = ruma::api::error::StandardErrorBody::new(kind, message);
                let mut response = (status, axum::Json(body)).into_response();
                if let Some(secs) = retry_after {
                    response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs as u64));
                }
                response
            }
        }
    }
}
