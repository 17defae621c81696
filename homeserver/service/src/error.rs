//! The one error type of the service layer, expressed in the spec's error codes.
//!
//! Services speak in Matrix error kinds (`M_FORBIDDEN`, `M_NOT_FOUND`, ...) and never in HTTP
//! statuses: the HTTP layer maps each kind to its status. Internal failures (database, I/O) are
//! logged where they happen and surface as `M_UNKNOWN` without their details.

use ruma::api::{
    client::uiaa::UiaaInfo,
    error::{ErrorKind, StandardErrorBody},
};

#[derive(Debug)]
pub enum Error {
    /// A failure the client should see, with the spec's error code and a readable message.
    Matrix(ErrorKind, String),
    /// User-interactive authentication is needed (or failed): the spec's 401 with flows.
    Uiaa(Box<UiaaInfo>),
    /// A failure inside the server; its details were logged.
    Internal,
    /// Another server could not be reached, or answered something that is not the spec's: the
    /// request may succeed later (answered `M_UNKNOWN` with 502 Bad Gateway).
    Remote(String),
    /// The request would replace something that exists and may not be replaced (a room alias
    /// taken): the spec's 409 Conflict, with `M_UNKNOWN`.
    Conflict(String),
    /// An MLS commit or message made in another epoch than its group's current one: 409
    /// Conflict with `FR_DIPLOMATIE_MLS_WRONG_EPOCH` and the `current_epoch`, so that the
    /// client catches up and tries again.
    MlsWrongEpoch { current: u64, got: u64 },
    /// A delayed event's delay above the server's maximum (MSC4140): 400 with
    /// `M_MAX_DELAY_EXCEEDED` and the `max_delay` in milliseconds.
    MaxDelayExceeded { max_delay: u64 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error::Matrix(kind, message.into())
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::NotFound, message)
    }
    pub fn bad_json(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::BadJson, message)
    }
    pub fn invalid_param(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidParam, message)
    }
    pub fn missing_param(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::MissingParam, message)
    }
    pub fn unrecognized(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Unrecognized, message)
    }

    /// The body the client receives (for UIA, the `auth_error` part).
    pub fn body(&self) -> StandardErrorBody {
        match self {
            Error::Matrix(kind, message) => StandardErrorBody::new(kind.clone(), message.clone()),
            Error::Uiaa(info) => info
                .auth_error
                .as_deref()
                .cloned()
                .unwrap_or(StandardErrorBody::new(ErrorKind::Unauthorized, "Authentication required".into())),
            Error::Internal => StandardErrorBody::new(ErrorKind::Unknown, "Internal server error".into()),
            Error::Remote(message) | Error::Conflict(message) => {
                StandardErrorBody::new(ErrorKind::Unknown, message.clone())
            }
            Error::MlsWrongEpoch { current, got } => {
                StandardErrorBody::new(ErrorKind::Unknown, format!("The group is at epoch {current}, not {got}"))
            }
            Error::MaxDelayExceeded { max_delay } => StandardErrorBody::new(
                ErrorKind::Unknown,
                format!("The requested delay exceeds the allowed maximum of {max_delay} ms"),
            ),
        }
    }
}

/// A refusal of the portal's rules (`policies`), answered `M_FORBIDDEN` with its reason.
pub(crate) fn forbidden(r: diplomatie_policies::Refusal) -> Error {
    Error::forbidden(r.0)
}

/// Logs an internal failure once, where it happened, and answers [`Error::Internal`]; used
/// through [`internal!`](crate::internal).
pub fn log_internal(error: &dyn std::fmt::Debug, place: &str) -> Error {
    tracing::error!(%place, error = ?error, "internal error");
    Error::Internal
}

/// A closure for `map_err` that logs the error with the file and line it happened at, then
/// answers [`Error::Internal`] (`M_UNKNOWN` to the client, without details):
/// `serde_json::to_value(&report).map_err(internal!())?`. With a message, a closure for
/// `ok_or_else` instead, where a value that must be there is missing:
/// `path.parent().ok_or_else(internal!("a media path has a parent"))?`.
#[macro_export]
macro_rules! internal {
    () => {
        |e| $crate::error::log_internal(&e, concat!(file!(), ":", line!()))
    };
    ($expected:literal) => {
        || $crate::error::log_internal(&concat!("expected: ", $expected), concat!(file!(), ":", line!()))
    };
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = self.body();
        write!(f, "{}: {}", body.kind.errcode(), body.message)
    }
}

impl std::error::Error for Error {}

impl From<diplomatie_storage::StorageError> for Error {
    fn from(e: diplomatie_storage::StorageError) -> Self {
        tracing::error!(error = %e, "database failure");
        Error::Internal
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::bad_json(e.to_string())
    }
}
