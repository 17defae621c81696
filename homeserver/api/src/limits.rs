//! What a request may take of the server before any handler runs: the size of its body
//! (refused from its `Content-Length` before anything is read, and cut off at the limit when it
//! declares none), the time to send it, and a share of the memory all bodies being read may
//! take together. Also where every error response becomes the spec's JSON error, whoever made
//! it (axum's own extractors answer plain text).

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use diplomatie_service::{Error, Services};
use http::{header, HeaderValue, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use ruma::api::error::{ErrorKind, LimitExceededErrorData, RetryAfter};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};

use crate::{error::ApiError, ruma_wrapper::access_token};

/// The shared state of the limits: the memory budget of bodies being read, and the uploads in
/// progress (per user and in all).
pub struct Limits {
    /// One permit a byte of body held in memory.
    budget: Arc<Semaphore>,
    budget_bytes: usize,
    uploads: Mutex<Uploads>,
}

#[derive(Default)]
struct Uploads {
    total: usize,
    per_user: std::collections::HashMap<ruma::OwnedUserId, usize>,
}

impl Limits {
    pub fn new(services: &Services) -> Arc<Limits> {
        let budget_bytes = (services.config.http.max_buffered_body_bytes as usize).min(Semaphore::MAX_PERMITS);
        Arc::new(Limits { budget: Arc::new(Semaphore::new(budget_bytes)), budget_bytes, uploads: Mutex::default() })
    }

    /// A place for one more upload by `user`, or `M_LIMIT_EXCEEDED` when the user or the server
    /// has as many in progress as the configuration allows. The place is freed when the
    /// returned guard is dropped.
    pub fn upload_slot(self: &Arc<Self>, services: &Services, user: &ruma::UserId) -> Result<UploadSlot, ApiError> {
        let media = &services.config.media;
        let mut uploads = self.uploads.lock().unwrap();
        let mine = uploads.per_user.get(user).copied().unwrap_or(0);
        if uploads.total >= media.max_concurrent_uploads || mine >= media.max_concurrent_uploads_per_user {
            return Err(limit_exceeded("Too many uploads in progress: wait for one to finish", 2000));
        }
        uploads.total += 1;
        *uploads.per_user.entry(user.to_owned()).or_default() += 1;
        Ok(UploadSlot { limits: self.clone(), user: user.to_owned() })
    }
}

/// An upload in progress; its place is freed on drop.
pub struct UploadSlot {
    limits: Arc<Limits>,
    user: ruma::OwnedUserId,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let mut uploads = self.limits.uploads.lock().unwrap();
        uploads.total = uploads.total.saturating_sub(1);
        if let Some(n) = uploads.per_user.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                uploads.per_user.remove(&self.user);
            }
        }
    }
}

fn limit_exceeded(message: &str, retry_ms: u64) -> ApiError {
    let mut data = LimitExceededErrorData::new();
    data.retry_after = Some(RetryAfter::Delay(Duration::from_millis(retry_ms)));
    ApiError(Error::new(ErrorKind::LimitExceeded(data), message))
}

/// The kind of body an endpoint takes, for its limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// A media upload: written to disk as it arrives, held to `media.max_upload_bytes` and to
    /// the idle timeout alone.
    Upload,
    /// An organisation import, for administrators (checked before the body is read).
    Import,
    /// JSON of an authenticated client or of another server.
    Json,
    /// JSON of a request without an access token.
    Unauthenticated,
}

/// Which limits a request's body is held to, from its method, path and credentials alone.
pub fn body_kind(req: &http::request::Parts) -> BodyKind {
    let path = req.uri.path();
    if path.starts_with("/_matrix/media/") && path.contains("/upload") {
        return BodyKind::Upload;
    }
    if path == "/_diplomatie/admin/v1/import" {
        return BodyKind::Import;
    }
    if path.starts_with("/_matrix/federation/")
        || path.starts_with("/_matrix/key/")
        || path.starts_with("/_diplomatie/federation/")
    {
        // Authenticated by their X-Matrix signature before the body is read.
        return BodyKind::Json;
    }
    if access_token(req).is_some() {
        BodyKind::Json
    } else {
        BodyKind::Unauthenticated
    }
}

/// The middleware: refuses what is too large or malformed before reading it, reserves memory
/// for the body, bounds the time to send it, and turns every non-JSON error into a Matrix one.
pub async fn limit_requests(
    State((services, limits)): State<(Arc<Services>, Arc<Limits>)>,
    req: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = req.into_parts();
    if let Err(e) = check_target(&parts.uri) {
        return e.into_response();
    }
    let kind = body_kind(&parts);
    if kind == BodyKind::Upload {
        // The extractor takes the upload's place among those in progress.
        parts.extensions.insert(limits.clone());
    }
    let config = &services.config;
    let limit = match kind {
        BodyKind::Upload => usize::try_from(config.media.max_upload_bytes).unwrap_or(usize::MAX),
        BodyKind::Import => {
            // Only an administrator may send a body that large: checked before reading it.
            let admin = match access_token(&parts) {
                Some(token) => services.accounts.authenticate(&token).await.map(|c| c.is_admin).unwrap_or(false),
                None => false,
            };
            if admin {
                config.portal.max_import_bytes
            } else {
                config.max_request_bytes.min(config.http.max_unauthenticated_body_bytes)
            }
        }
        BodyKind::Json => config.max_request_bytes,
        BodyKind::Unauthenticated => config.http.max_unauthenticated_body_bytes.min(config.max_request_bytes),
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        let e = ApiError(Error::new(
            ErrorKind::TooLarge,
            format!("The request body is larger than this endpoint's limit of {limit} bytes"),
        ));
        return with_close(e.into_response());
    }
    // A body without a declared length may still come (chunked); one with length 0 does not.
    let has_body = declared.map_or_else(|| !body.is_end_stream(), |n| n > 0);
    let timeouts = &config.http;
    let idle = Duration::from_millis(timeouts.body_idle_timeout_ms);
    let whole = (kind != BodyKind::Upload).then(|| Duration::from_millis(timeouts.body_timeout_ms));
    // Memory for the body, taken from the shared budget as its bytes arrive (a client that
    // declares much and sends little holds little) and held until the response; uploads go to
    // disk and take none.
    let mut held: Option<Held> = None;
    let body = if has_body {
        let accounting = (kind != BodyKind::Upload).then(|| Accounting {
            budget: limits.budget.clone(),
            cap: limits.budget_bytes,
            held: held.insert(Held::default()).clone(),
        });
        Body::new(http_body_util::Limited::new(TimedBody::new(body, idle, whole, accounting), limit))
    } else {
        body
    };
    let response = next.run(Request::from_parts(parts, body)).await;
    drop(held);
    as_matrix_error(response).await
}

/// The budget a request's body holds, until its response.
type Held = Arc<Mutex<Option<OwnedSemaphorePermit>>>;

/// Where a body takes the memory of its bytes from.
pub struct Accounting {
    budget: Arc<Semaphore>,
    cap: usize,
    held: Held,
}

impl Accounting {
    fn keep(&self, permit: OwnedSemaphorePermit) {
        let mut held = self.held.lock().unwrap();
        match held.as_mut() {
            Some(p) => p.merge(permit),
            None => *held = Some(permit),
        }
    }
}

/// Refuses a path or query carrying a NUL character, or a path that is not UTF-8 once decoded:
/// no identifier may hold either, and PostgreSQL cannot store a NUL.
fn check_target(uri: &http::Uri) -> Result<(), ApiError> {
    use percent_encoding::percent_decode_str;
    let bad = |what: &str| Err(ApiError(Error::new(ErrorKind::InvalidParam, what.to_owned())));
    // Decoded without a copy unless the path has escapes.
    match percent_decode_str(uri.path()).decode_utf8() {
        Err(_) => return bad("The request path is not UTF-8"),
        Ok(p) if p.contains('\0') => return bad("The request path contains a NUL character"),
        Ok(_) => {}
    }
    if uri.query().is_some_and(|q| percent_decode_str(q).any(|b| b == 0)) {
        return bad("The query string contains a NUL character");
    }
    Ok(())
}

/// Asks the client to close the connection after a response whose request body was not read.
fn with_close(mut response: Response) -> Response {
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Any error response that is not JSON (axum's extractors answer plain text) becomes the
/// spec's JSON error with the code its status stands for.
async fn as_matrix_error(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let (status, kind) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (status, ErrorKind::TooLarge),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (StatusCode::BAD_REQUEST, ErrorKind::NotJson),
        StatusCode::UNPROCESSABLE_ENTITY => (StatusCode::BAD_REQUEST, ErrorKind::BadJson),
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => (status, ErrorKind::Unrecognized),
        StatusCode::UNAUTHORIZED => (status, ErrorKind::Unauthorized),
        StatusCode::FORBIDDEN => (status, ErrorKind::Forbidden),
        StatusCode::TOO_MANY_REQUESTS => (status, ErrorKind::LimitExceeded(LimitExceededErrorData::new())),
        StatusCode::BAD_REQUEST if text.contains("path") || text.contains("URL") || text.contains("UTF-8") => {
            (status, ErrorKind::InvalidParam)
        }
        StatusCode::BAD_REQUEST => (status, ErrorKind::BadJson),
        _ => (status, ErrorKind::Unknown),
    };
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("Error").to_owned() } else { text };
    let mut out = (status, axum::Json(ruma::api::error::StandardErrorBody::new(kind, message))).into_response();
    for name in [header::CONNECTION, header::RETRY_AFTER] {
        if let Some(v) = parts.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

/// Why a body could not be read: it took too long.
#[derive(Debug)]
pub struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body was not sent in time")
    }
}

impl std::error::Error for BodyTimedOut {}

/// The error a body read failed with, as the client is answered.
pub fn body_error(e: &(dyn std::error::Error + 'static)) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return ApiError(Error::new(ErrorKind::TooLarge, "Request body too large"));
        }
        if s.is::<BodyTimedOut>() {
            return ApiError(Error::new(ErrorKind::Unknown, "The request body was not sent in time"));
        }
        source = s.source();
    }
    ApiError(Error::bad_json(format!("The request body could not be read: {e}")))
}

type Acquiring = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>> + Send>>;

/// A request body that fails when the client is silent for longer than `idle`, or, when
/// `whole` is set, takes longer than that in all; with `accounting`, each frame is passed on
/// once its bytes have their share of the memory budget.
pub struct TimedBody {
    inner: Body,
    idle_for: Duration,
    idle: Pin<Box<Sleep>>,
    whole: Option<Pin<Box<Sleep>>>,
    accounting: Option<Accounting>,
    /// A frame waiting for its memory.
    waiting: Option<(Frame<Bytes>, Acquiring)>,
}

impl TimedBody {
    pub fn new(inner: Body, idle_for: Duration, whole: Option<Duration>, accounting: Option<Accounting>) -> TimedBody {
        TimedBody {
            inner,
            idle_for,
            idle: Box::pin(tokio::time::sleep(idle_for)),
            whole: whole.map(|d| Box::pin(tokio::time::sleep(d))),
            accounting,
            waiting: None,
        }
    }

    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        let late = self.whole.as_mut().is_some_and(|w| w.as_mut().poll(cx).is_ready());
        late || self.idle.as_mut().poll(cx).is_ready()
    }
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        loop {
            if let Some((_, acquiring)) = this.waiting.as_mut() {
                match acquiring.as_mut().poll(cx) {
                    Poll::Ready(Ok(permit)) => {
                        if let Some(a) = &this.accounting {
                            a.keep(permit);
                        }
                        let (frame, _) = this.waiting.take().expect("a frame waits");
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(Box::new(e)))),
                    Poll::Pending if this.timed_out(cx) => return Poll::Ready(Some(Err(Box::new(BodyTimedOut)))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let next = Instant::now() + this.idle_for;
                    this.idle.as_mut().reset(next);
                    let len = frame.data_ref().map_or(0, Bytes::len);
                    let Some(a) = this.accounting.as_ref().filter(|_| len > 0) else {
                        return Poll::Ready(Some(Ok(frame)));
                    };
                    let wanted = u32::try_from(len.min(a.cap)).unwrap_or(u32::MAX);
                    match a.budget.clone().try_acquire_many_owned(wanted) {
                        Ok(permit) => {
                            a.keep(permit);
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        // No room now: the frame waits for it (the loop polls the wait).
                        Err(_) => this.waiting = Some((frame, Box::pin(a.budget.clone().acquire_many_owned(wanted)))),
                    }
                }
                Poll::Ready(other) => return Poll::Ready(other.map(|f| f.map_err(Into::into))),
                Poll::Pending if this.timed_out(cx) => return Poll::Ready(Some(Err(Box::new(BodyTimedOut)))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.waiting.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_and_invalid_utf8_in_targets_are_refused() {
        let ok: http::Uri = "/_matrix/client/v3/rooms/%21a%3Ab/state?x=%41".parse().unwrap();
        assert!(check_target(&ok).is_ok());
        for bad in ["/_matrix/client/v3/profile/%00a", "/_diplomatie/admin/v1/users/%FF%FE/kind", "/x?q=a%00"] {
            let uri: http::Uri = bad.parse().unwrap();
            assert!(check_target(&uri).is_err(), "{bad}");
        }
        let decoded = |s: &str| percent_encoding::percent_decode_str(s).collect::<Vec<u8>>();
        assert_eq!(decoded("%4"), b"%4");
        assert_eq!(decoded("a%41%"), b"aA%");
    }

    #[tokio::test]
    async fn a_body_takes_its_memory_as_it_arrives_and_holds_it_until_the_response() {
        use http_body_util::BodyExt;
        let budget = Arc::new(Semaphore::new(10));
        let held: Held = Arc::default();
        let accounting = Accounting { budget: budget.clone(), cap: 10, held: held.clone() };
        let frames = vec![Ok::<_, std::io::Error>(Bytes::from(vec![1u8; 6])), Ok(Bytes::from(vec![2u8; 6]))];
        let body = Body::from_stream(futures::stream::iter(frames));
        let mut body = TimedBody::new(body, Duration::from_secs(5), Some(Duration::from_millis(300)), Some(accounting));
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().unwrap().len(), 6);
        assert_eq!(budget.available_permits(), 4);
        // The second needs 6 bytes of the 4 left: it waits, until the body's time is up.
        let second = body.frame().await.expect("an answer");
        assert!(second.is_err());
        drop(body);
        // The body is gone, but what it read is held until the response.
        assert_eq!(budget.available_permits(), 4);
        drop(held);
        assert_eq!(budget.available_permits(), 10);
    }
}
