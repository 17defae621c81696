//! The content repository (client-server spec, "Content repository"): the authenticated
//! `/_matrix/client/v1/media` endpoints, uploads under `/_matrix/media/v3`, and the deprecated
//! unauthenticated downloads, which serve media only when the configuration allows it.

// The deprecated `/_matrix/media/v3` endpoints are served on purpose (see `legacy_allowed`).
#![allow(deprecated)]

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::State,
    response::{IntoResponse, Response},
};
use diplomatie_service::{
    media::{is_inline, Download, ThumbnailMethod, Upload},
    Error, Services,
};
use http::{header, HeaderValue, StatusCode};
use ruma::{
    api::client::{authenticated_media as authed, media},
    http_headers::{ContentDisposition, ContentDispositionType},
    media::Method,
    MilliSecondsSinceUnixEpoch, UInt,
};

use crate::{
    error::ApiError,
    ruma_wrapper::{ApiResult, Ruma},
};

type S = State<Arc<Services>>;

/// What the browser may do with downloaded content: nothing active (client-server spec,
/// "Security considerations" of the content repository).
const CONTENT_SECURITY_POLICY: &str = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; \
     style-src 'unsafe-inline'; media-src 'self'; object-src 'self';";

/// A download: the bytes with their type, a disposition (`inline` only for safe types), and
/// headers that keep a browser from running them.
fn file_response(d: Download, filename: Option<String>, force_inline: bool) -> Response {
    let kind = if force_inline || is_inline(&d.content_type) {
        ContentDispositionType::Inline
    } else {
        ContentDispositionType::Attachment
    };
    let disposition = ContentDisposition::new(kind).with_filename(filename.or(d.filename));
    let mut response = (StatusCode::OK, Body::from(d.bytes)).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&d.content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    } else {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    }
    if let Ok(v) = HeaderValue::from_str(&disposition.to_string()) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert("cross-origin-resource-policy", HeaderValue::from_static("cross-origin"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=86400, immutable"));
    response
}

pub(crate) fn method_of(method: Option<&Method>) -> ThumbnailMethod {
    match method {
        Some(Method::Crop) => ThumbnailMethod::Crop,
        _ => ThumbnailMethod::Scale,
    }
}

fn upload_size(s: &Services) -> UInt {
    UInt::new_saturating(s.config.media.max_upload_bytes)
}

pub async fn config(
    State(s): S,
    _req: Ruma<authed::get_media_config::v1::Request>,
) -> ApiResult<authed::get_media_config::v1::Response> {
    Ok(authed::get_media_config::v1::Response::new(upload_size(&s)).into())
}

pub async fn legacy_config(
    State(s): S,
    _req: Ruma<media::get_media_config::v3::Request>,
) -> ApiResult<media::get_media_config::v3::Response> {
    Ok(media::get_media_config::v3::Response::new(upload_size(&s)).into())
}

/// The file of an upload, spooled to disk by the extractor.
fn spooled<T>(req: &mut Ruma<T>) -> Result<Upload<'static>, ApiError> {
    let (file, _slot) = req.upload.take().ok_or_else(diplomatie_service::internal!("the extractor spools uploads"))?;
    Ok(Upload::Spooled(file))
}

pub async fn upload(
    State(s): S,
    mut req: Ruma<media::create_content::v3::Request>,
) -> ApiResult<media::create_content::v3::Response> {
    let file = spooled(&mut req)?;
    let caller = req.caller();
    let body = &req.body;
    let uri =
        s.media.upload_media(&caller.user_id, file, body.content_type.as_deref(), body.filename.as_deref()).await?;
    Ok(media::create_content::v3::Response::new(uri).into())
}

pub async fn create(
    State(s): S,
    req: Ruma<media::create_mxc_uri::v1::Request>,
) -> ApiResult<media::create_mxc_uri::v1::Response> {
    let (uri, expires) = s.media.create_media_id(&req.caller().user_id).await?;
    let mut response = media::create_mxc_uri::v1::Response::new(uri);
    response.unused_expires_at = UInt::new(expires as u64).map(MilliSecondsSinceUnixEpoch);
    Ok(response.into())
}

pub async fn upload_to(
    State(s): S,
    mut req: Ruma<media::create_content_async::v3::Request>,
) -> Result<Response, ApiError> {
    let file = spooled(&mut req)?;
    let caller = req.caller();
    let body = &req.body;
    s.media
        .upload_to_media_id(
            &caller.user_id,
            &body.server_name,
            &body.media_id,
            file,
            body.content_type.as_deref(),
            body.filename.as_deref(),
        )
        .await?;
    // ruma's response type has no constructor: its body is `{}`.
    Ok(axum::Json(serde_json::Map::new()).into_response())
}

pub async fn download(State(s): S, req: Ruma<authed::get_content::v1::Request>) -> Result<Response, ApiError> {
    let b = req.body;
    let d = s.media.download_media(&b.server_name, &b.media_id, b.timeout_ms).await?;
    Ok(file_response(d, None, false))
}

pub async fn download_as(
    State(s): S,
    req: Ruma<authed::get_content_as_filename::v1::Request>,
) -> Result<Response, ApiError> {
    let b = req.body;
    let d = s.media.download_media(&b.server_name, &b.media_id, b.timeout_ms).await?;
    Ok(file_response(d, Some(b.filename), false))
}

pub async fn thumbnail(
    State(s): S,
    req: Ruma<authed::get_content_thumbnail::v1::Request>,
) -> Result<Response, ApiError> {
    let b = req.body;
    let (w, h) = (b.width.into(), b.height.into());
    let d = s.media.thumbnail(&b.server_name, &b.media_id, w, h, method_of(b.method.as_ref()), b.timeout_ms).await?;
    Ok(file_response(d, None, true))
}

pub async fn preview(
    State(s): S,
    req: Ruma<authed::get_media_preview::v1::Request>,
) -> ApiResult<authed::get_media_preview::v1::Response> {
    let og = s.previews.preview_url(&req.caller().user_id, &req.body.url).await?;
    Ok(authed::get_media_preview::v1::Response::from_serialize(&og).map_err(diplomatie_service::internal!())?.into())
}

pub async fn legacy_preview(
    State(s): S,
    req: Ruma<media::get_media_preview::v3::Request>,
) -> ApiResult<media::get_media_preview::v3::Response> {
    let og = s.previews.preview_url(&req.caller().user_id, &req.body.url).await?;
    Ok(media::get_media_preview::v3::Response::from_serialize(&og).map_err(diplomatie_service::internal!())?.into())
}

/// The deprecated unauthenticated downloads answer as if the media did not exist unless the
/// configuration keeps them (the spec's "freeze" of unauthenticated media).
/// `allow_remote=false` keeps them to this server's own media.
fn legacy_allowed(s: &Services, server: &ruma::ServerName, allow_remote: bool) -> Result<(), ApiError> {
    if !s.config.media.legacy_downloads {
        return Err(ApiError(Error::not_found(
            "Unauthenticated media downloads are disabled: use /_matrix/client/v1/media",
        )));
    }
    if !allow_remote && server != s.server_name() {
        return Err(ApiError(Error::not_found("Remote media not fetched (allow_remote is false)")));
    }
    Ok(())
}

pub async fn legacy_download(State(s): S, req: Ruma<media::get_content::v3::Request>) -> Result<Response, ApiError> {
    let b = req.body;
    legacy_allowed(&s, &b.server_name, b.allow_remote)?;
    let d = s.media.download_media(&b.server_name, &b.media_id, b.timeout_ms).await?;
    Ok(file_response(d, None, false))
}

pub async fn legacy_download_as(
    State(s): S,
    req: Ruma<media::get_content_as_filename::v3::Request>,
) -> Result<Response, ApiError> {
    let b = req.body;
    legacy_allowed(&s, &b.server_name, b.allow_remote)?;
    let d = s.media.download_media(&b.server_name, &b.media_id, b.timeout_ms).await?;
    Ok(file_response(d, Some(b.filename), false))
}

pub async fn legacy_thumbnail(
    State(s): S,
    req: Ruma<media::get_content_thumbnail::v3::Request>,
) -> Result<Response, ApiError> {
    let b = req.body;
    legacy_allowed(&s, &b.server_name, b.allow_remote)?;
    let (w, h) = (b.width.into(), b.height.into());
    let timeout: Duration = b.timeout_ms;
    let d = s.media.thumbnail(&b.server_name, &b.media_id, w, h, method_of(b.method.as_ref()), timeout).await?;
    Ok(file_response(d, None, true))
}
