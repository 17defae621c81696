//! The media repository (client-server spec, "Content repository").
//!
//! File contents live on disk under `<data_dir>/media`, named by their SHA-256 (two uploads of
//! the same bytes share one file); their metadata lives in the database. A file is written and
//! synced before its row is committed, so a committed row always has its file.
//!
//! Thumbnails are made on demand with the `image` crate, at one of a few fixed sizes (as the
//! spec recommends, so that a client asking for every size cannot make the server store every
//! size), and cached like uploads.

use std::{
    collections::HashMap,
    io::Cursor,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::Duration,
};

use diplomatie_storage::media::{self as store, Media, Thumbnail};
use ruma::{
    api::{
        error::{ErrorKind, ResourceLimitExceededErrorData},
        federation::authenticated_media::{get_content, Content, FileOrLocation},
    },
    http_headers::ContentDisposition,
    OwnedMxcUri, OwnedServerName, ServerName, UserId,
};
use sha2::{Digest, Sha256};

use crate::{core::Core, federation::client::Transport, now_ms, random_string, Error, Result};

/// The thumbnail sizes the server makes: (width, height, crop).
const THUMBNAIL_SIZES: &[(u32, u32, bool)] =
    &[(32, 32, true), (96, 96, true), (320, 240, false), (640, 480, false), (800, 600, false)];

/// Content types a browser may render inline without risk (client-server spec, "Serving inline
/// content"); everything else is served as an attachment.
const INLINE_CONTENT_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

/// Whether `content_type` may be served with `Content-Disposition: inline`.
pub fn is_inline(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    INLINE_CONTENT_TYPES.contains(&essence.as_str())
}

type FetchLock = Arc<tokio::sync::Mutex<()>>;

/// Files on disk, content-addressed, and the signal that wakes downloads waiting for an
/// upload.
pub struct MediaState {
    dir: PathBuf,
    uploaded: tokio::sync::watch::Sender<u64>,
    /// One lock per remote media being fetched, so that concurrent downloads fetch it once.
    fetching: std::sync::Mutex<HashMap<(OwnedServerName, String), FetchLock>>,
    /// The client that follows another server's redirection to its media (`Location`).
    redirect_client: OnceLock<crate::outbound::Client>,
}

impl MediaState {
    pub fn new(data_dir: &Path) -> MediaState {
        MediaState {
            dir: data_dir.join("media"),
            uploaded: tokio::sync::watch::Sender::new(0),
            fetching: Default::default(),
            redirect_client: OnceLock::new(),
        }
    }

    /// Removes the uploads a crash interrupted (nothing refers to them); only the serving
    /// process, which holds the data directory's lock, calls it.
    pub fn remove_interrupted_uploads(&self) {
        let _ = std::fs::remove_dir_all(self.dir.join("tmp"));
    }

    fn path_of(&self, sha256: &str) -> PathBuf {
        self.dir.join(&sha256[..2]).join(&sha256[2..4]).join(sha256)
    }

    /// Removes a stored file (once nothing refers to it); a file already gone is no error.
    pub(crate) async fn remove(&self, sha256: &str) {
        if sha256.len() < 4 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return;
        }
        if let Err(e) = tokio::fs::remove_file(self.path_of(sha256)).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(sha256, error = %e, "cannot remove a media file");
            }
        }
    }

    /// Stores `bytes` (unless the same bytes are already stored) and returns their SHA-256.
    /// The file is complete and synced before this returns: a crash leaves at worst an
    /// unreferenced temporary file, never a truncated one under its final name.
    async fn store(&self, bytes: &[u8]) -> Result<String> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        let path = self.path_of(&sha256);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(sha256);
        }
        let io = |e: std::io::Error| {
            tracing::error!(error = %e, "cannot write media");
            Error::Internal
        };
        let parent = path.parent().ok_or_else(crate::internal!("a value present by construction"))?;
        tokio::fs::create_dir_all(parent).await.map_err(io)?;
        let tmp = parent.join(format!(".{sha256}.{}", random_string(8)));
        let mut file = tokio::fs::File::create(&tmp).await.map_err(io)?;
        tokio::io::AsyncWriteExt::write_all(&mut file, bytes).await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        tokio::fs::rename(&tmp, &path).await.map_err(io)?;
        Ok(sha256)
    }

    /// Writes an upload to a temporary file as it arrives, hashing it on the way, and refuses
    /// it (`M_TOO_LARGE`, the file removed) as soon as it is longer than `max` bytes: an upload
    /// never takes more memory than one chunk.
    async fn spool<S, B>(&self, mut chunks: S, max: u64) -> Result<Spooled>
    where
        S: futures::Stream<Item = Result<B>> + Unpin,
        B: AsRef<[u8]>,
    {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let io = |e: std::io::Error| {
            tracing::error!(error = %e, "cannot write an upload");
            Error::Internal
        };
        let dir = self.dir.join("tmp");
        tokio::fs::create_dir_all(&dir).await.map_err(io)?;
        let path = dir.join(format!("upload-{}", random_string(16)));
        let mut file = tokio::fs::File::create(&path).await.map_err(io)?;
        // Removed on any early return from here on.
        let mut spooled = Spooled { path: Some(path), sha256: String::new(), len: 0 };
        let mut hasher = Sha256::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            let chunk = chunk.as_ref();
            spooled.len += chunk.len() as u64;
            if spooled.len > max {
                return Err(Error::new(
                    ErrorKind::TooLarge,
                    format!("The file is larger than this server's limit of {max} bytes"),
                ));
            }
            hasher.update(chunk);
            file.write_all(chunk).await.map_err(io)?;
        }
        file.sync_all().await.map_err(io)?;
        spooled.sha256 = hex::encode(hasher.finalize());
        Ok(spooled)
    }

    /// Moves a spooled upload to its place (or drops it when the same bytes are stored
    /// already); returns its SHA-256.
    async fn keep(&self, mut spooled: Spooled) -> Result<String> {
        let tmp = spooled.path.take().ok_or_else(crate::internal!("a value present by construction"))?;
        let path = self.path_of(&spooled.sha256);
        let io = |e: std::io::Error| {
            tracing::error!(error = %e, "cannot move an upload in place");
            Error::Internal
        };
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Ok(spooled.sha256.clone());
        }
        tokio::fs::create_dir_all(path.parent().ok_or_else(crate::internal!("a value present by construction"))?)
            .await
            .map_err(io)?;
        tokio::fs::rename(&tmp, &path).await.map_err(io)?;
        Ok(spooled.sha256.clone())
    }

    async fn read(&self, sha256: &str) -> Result<Vec<u8>> {
        tokio::fs::read(self.path_of(sha256)).await.map_err(|e| {
            tracing::error!(error = %e, sha256, "media file missing");
            Error::Internal
        })
    }
}

/// An upload written to a temporary file, not yet kept: the file is removed when this is
/// dropped unkept (a refused or failed upload leaves nothing behind).
#[derive(Debug)]
pub struct Spooled {
    path: Option<PathBuf>,
    sha256: String,
    len: u64,
}

impl Spooled {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Spooled {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The content of an upload: bytes in memory (made by the server itself), or a client's file
/// spooled to disk.
pub enum Upload<'a> {
    Bytes(&'a [u8]),
    Spooled(Spooled),
}

impl Upload<'_> {
    fn len(&self) -> u64 {
        match self {
            Upload::Bytes(b) => b.len() as u64,
            Upload::Spooled(s) => s.len,
        }
    }
}

/// What a download returns.
#[derive(Debug)]
pub struct Download {
    pub bytes: Vec<u8>,
    pub content_type: String,
    pub filename: Option<String>,
}

/// The resizing method of a thumbnail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThumbnailMethod {
    Crop,
    Scale,
}

/// The media repository: uploads, downloads (other servers' media fetched once and kept),
/// thumbnails. Over the core and the federation transport.
pub struct Repository {
    core: Arc<Core>,
    transport: Arc<Transport>,
    /// The files and what waits for them.
    pub files: MediaState,
}

crate::core::over_core!(Repository);

impl Repository {
    pub(crate) fn new(core: Arc<Core>, transport: Arc<Transport>, files: MediaState) -> Repository {
        Repository { core, transport, files }
    }

    /// The media id's URI on this server.
    fn mxc(&self, media_id: &str) -> OwnedMxcUri {
        format!("mxc://{}/{media_id}", self.server_name()).into()
    }

    /// Checks a declared content type: a well-formed `type/subtype`, not refused by the
    /// configuration. `None` stays `None` (served as `application/octet-stream`).
    fn check_content_type(&self, content_type: Option<&str>) -> Result<Option<String>> {
        let Some(ct) = content_type.map(str::trim).filter(|c| !c.is_empty()) else { return Ok(None) };
        let essence = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        let token =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b));
        match essence.split_once('/') {
            Some((kind, sub)) if token(kind) && token(sub) => {}
            _ => return Err(Error::invalid_param(format!("{ct:?} is not a media type"))),
        }
        if self.config.media.refused_content_types.iter().any(|r| essence.starts_with(&r.to_ascii_lowercase())) {
            return Err(Error::forbidden(format!("Uploads of type {essence} are not accepted by this server")));
        }
        Ok(Some(ct.to_owned()))
    }

    /// Refuses an upload of `len` bytes that is too large or over the user's quota.
    async fn check_upload_size(&self, user: &UserId, len: u64) -> Result<()> {
        let media = &self.config.media;
        if len > media.max_upload_bytes {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!("The file is larger than this server's limit of {} bytes", media.max_upload_bytes),
            ));
        }
        if media.user_quota_bytes > 0 {
            let (used, _) = store::usage(self.db.pool(), user.as_str(), now_ms()).await?;
            if used as u64 + len > media.user_quota_bytes {
                let contact = format!("mailto:postmaster@{}", self.server_name());
                return Err(Error::new(
                    ErrorKind::ResourceLimitExceeded(ResourceLimitExceededErrorData::new(contact)),
                    format!("This upload would exceed your media quota of {} bytes", media.user_quota_bytes),
                ));
            }
        }
        Ok(())
    }

    /// Writes a client's upload to disk as it arrives, within `media.max_upload_bytes`; then
    /// [`Self::upload_media`] or [`Self::upload_to_media_id`] keeps it. The stream's errors
    /// (the client too slow, its body over a limit) are answered as they are.
    pub async fn spool_upload<S, B>(&self, chunks: S) -> Result<Spooled>
    where
        S: futures::Stream<Item = Result<B>> + Unpin,
        B: AsRef<[u8]>,
    {
        self.files.spool(chunks, self.config.media.max_upload_bytes).await
    }

    /// Stores an upload's content, once its checks passed.
    async fn store_upload(&self, file: Upload<'_>) -> Result<String> {
        match file {
            Upload::Bytes(bytes) => self.files.store(bytes).await,
            Upload::Spooled(spooled) => self.files.keep(spooled).await,
        }
    }

    /// `POST /media/v3/upload`: stores a file and returns its new `mxc://` URI.
    pub async fn upload_media(
        &self,
        user: &UserId,
        file: Upload<'_>,
        content_type: Option<&str>,
        filename: Option<&str>,
    ) -> Result<OwnedMxcUri> {
        let content_type = self.check_content_type(content_type)?;
        let len = file.len();
        self.check_upload_size(user, len).await?;
        let sha256 = self.store_upload(file).await?;
        let media_id = random_string(24);
        store::insert_media(
            self.db.pool(),
            &Media {
                origin: self.server_name().to_string(),
                media_id: media_id.clone(),
                uploader: user.to_string(),
                content_type,
                filename: filename.map(str::to_owned),
                size: Some(len as i64),
                sha256: Some(sha256),
                created_ts: now_ms(),
                expires_ts: None,
            },
        )
        .await?;
        Ok(self.mxc(&media_id))
    }

    /// `POST /media/v1/create`: reserves a media id for a later upload. Returns the URI and
    /// when it expires unused.
    pub async fn create_media_id(&self, user: &UserId) -> Result<(OwnedMxcUri, i64)> {
        let now = now_ms();
        let (_, pending) = store::usage(self.db.pool(), user.as_str(), now).await?;
        if pending as u64 >= self.config.media.max_pending_uploads {
            let mut data = ruma::api::error::LimitExceededErrorData::new();
            data.retry_after = Some(ruma::api::error::RetryAfter::Delay(Duration::from_secs(60)));
            return Err(Error::new(
                ErrorKind::LimitExceeded(data),
                "Too many media ids are waiting for their upload: upload them first",
            ));
        }
        let media_id = random_string(24);
        let expires = now + self.config.media.pending_expiry_ms as i64;
        store::insert_media(
            self.db.pool(),
            &Media {
                origin: self.server_name().to_string(),
                media_id: media_id.clone(),
                uploader: user.to_string(),
                content_type: None,
                filename: None,
                size: None,
                sha256: None,
                created_ts: now,
                expires_ts: Some(expires),
            },
        )
        .await?;
        Ok((self.mxc(&media_id), expires))
    }

    /// `PUT /media/v3/upload/{serverName}/{mediaId}`: the upload of a reserved media id.
    pub async fn upload_to_media_id(
        &self,
        user: &UserId,
        server: &ServerName,
        media_id: &str,
        file: Upload<'_>,
        content_type: Option<&str>,
        filename: Option<&str>,
    ) -> Result<()> {
        let unknown = || Error::not_found("Unknown media id");
        if server != self.server_name() {
            return Err(unknown());
        }
        let media = store::get_media(self.db.pool(), server.as_str(), media_id).await?.ok_or_else(unknown)?;
        if media.uploader != user.as_str() {
            return Err(Error::forbidden("This media id was created by another user"));
        }
        if media.sha256.is_some() {
            return Err(Error::new(ErrorKind::CannotOverwriteMedia, "This media id already has its content"));
        }
        if media.expires_ts.is_some_and(|t| t <= now_ms()) {
            return Err(unknown());
        }
        let content_type = self.check_content_type(content_type)?;
        let len = file.len();
        self.check_upload_size(user, len).await?;
        let sha256 = self.store_upload(file).await?;
        let done = store::complete_upload(
            self.db.pool(),
            server.as_str(),
            media_id,
            content_type.as_deref(),
            filename,
            len as i64,
            &sha256,
        )
        .await?;
        if !done {
            // Two uploads raced: the other one won.
            return Err(Error::new(ErrorKind::CannotOverwriteMedia, "This media id already has its content"));
        }
        self.files.uploaded.send_modify(|n| *n += 1);
        Ok(())
    }

    /// The metadata of an uploaded media item, waiting up to `timeout` for a pending upload;
    /// not found when an administrator quarantined it.
    async fn uploaded_media(&self, server: &ServerName, media_id: &str, timeout: Duration) -> Result<Media> {
        let unknown = || Error::not_found("Media not found");
        if store::quarantined(self.db.pool(), server.as_str(), media_id).await? {
            return Err(unknown());
        }
        if server != self.server_name() {
            return self.remote_media(server, media_id, timeout).await;
        }
        let deadline = tokio::time::Instant::now() + timeout.min(Duration::from_secs(120));
        let mut uploaded = self.files.uploaded.subscribe();
        loop {
            uploaded.borrow_and_update();
            let media = store::get_media(self.db.pool(), server.as_str(), media_id).await?.ok_or_else(unknown)?;
            if media.sha256.is_some() {
                return Ok(media);
            }
            if media.expires_ts.is_some_and(|t| t <= now_ms()) {
                return Err(unknown());
            }
            if tokio::time::timeout_at(deadline, uploaded.changed()).await.is_err() {
                return Err(Error::new(ErrorKind::NotYetUploaded, "The content has not been uploaded yet"));
            }
        }
    }

    /// Another server's media: from the cache of what was fetched before, or fetched now over
    /// federation (`/_matrix/federation/v1/media/download`) and kept. Unknown when federation
    /// with that server is not allowed.
    async fn remote_media(&self, server: &ServerName, media_id: &str, timeout: Duration) -> Result<Media> {
        let cached = || async {
            Ok::<_, Error>(
                store::get_media(self.db.pool(), server.as_str(), media_id).await?.filter(|m| m.sha256.is_some()),
            )
        };
        if let Some(media) = cached().await? {
            return Ok(media);
        }
        if let Err(e) = self.transport.check_server_allowed(server) {
            tracing::debug!(%server, error = %e, "remote media not fetched");
            return Err(Error::not_found("Media not found"));
        }
        let lock = {
            let mut fetching = self.files.fetching.lock().unwrap();
            fetching.entry((server.to_owned(), media_id.to_owned())).or_default().clone()
        };
        let fetched = async {
            let _guard = lock.lock().await;
            if let Some(media) = cached().await? {
                return Ok(media);
            }
            self.fetch_remote_media(server, media_id, timeout).await
        }
        .await;
        let mut fetching = self.files.fetching.lock().unwrap();
        if Arc::strong_count(&lock) <= 2 {
            fetching.remove(&(server.to_owned(), media_id.to_owned()));
        }
        fetched
    }

    async fn fetch_remote_media(&self, server: &ServerName, media_id: &str, timeout: Duration) -> Result<Media> {
        let max = self.config.media.max_upload_bytes;
        let mut request = get_content::v1::Request::new(media_id.to_owned());
        request.timeout_ms = timeout.min(Duration::from_secs(120));
        // The multipart envelope and its metadata part come on top of the file.
        let response = self.transport.federation_request_within(server, request, max + 64 * 1024).await?;
        let content = match response.content {
            FileOrLocation::File(content) => content,
            FileOrLocation::Location(url) => self.follow_media_location(server, &url, max).await?,
            _ => return Err(crate::federation::remote_error(server, "an answer of an unknown kind")),
        };
        if content.file.len() as u64 > max {
            return Err(Error::new(ErrorKind::TooLarge, format!("The remote file is larger than {max} bytes")));
        }
        // What another server declares is kept only when it is well-formed.
        let content_type =
            content.content_type.as_deref().and_then(|ct| self.check_content_type(Some(ct)).ok().flatten());
        let sha256 = self.files.store(&content.file).await?;
        let media = Media {
            origin: server.to_string(),
            media_id: media_id.to_owned(),
            uploader: String::new(),
            content_type,
            filename: content.content_disposition.and_then(|d| d.filename),
            size: Some(content.file.len() as i64),
            sha256: Some(sha256),
            created_ts: now_ms(),
            expires_ts: None,
        };
        store::insert_media(self.db.pool(), &media).await?;
        tracing::info!(%server, media_id, size = content.file.len(), "remote media fetched");
        Ok(media)
    }

    /// Follows the URL another server gave instead of its file, through the client that refuses
    /// private and loopback addresses (the URL comes from that server, not from us).
    async fn follow_media_location(&self, server: &ServerName, url: &str, max: u64) -> Result<Content> {
        use crate::outbound::{read_limited, BodyError};
        let failed = |what: String| crate::federation::remote_error(server, what);
        let parsed = reqwest::Url::parse(url).map_err(|e| failed(format!("bad media location {url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(failed(format!("bad media location {url:?}")));
        }
        let client = match self.files.redirect_client.get() {
            Some(c) => c,
            None => {
                let timeout = Duration::from_millis(self.config.federation.request_timeout_ms);
                let c = crate::outbound::client(&self.config.outbound, Arc::new(Vec::new()), timeout, "remote media")?;
                self.files.redirect_client.get_or_init(|| c)
            }
        };
        let response = client.get(parsed).send().await.map_err(|e| failed(e.to_string()))?;
        if !response.status().is_success() {
            return Err(failed(format!("media location answered {}", response.status())));
        }
        let header =
            |name| response.headers().get(name).and_then(|v: &http::HeaderValue| v.to_str().ok()).map(str::to_owned);
        let content_type = header(reqwest::header::CONTENT_TYPE);
        let disposition =
            header(reqwest::header::CONTENT_DISPOSITION).and_then(|d| d.parse::<ContentDisposition>().ok());
        let file = read_limited(response, max).await.map_err(|e| match e {
            BodyError::TooLarge => {
                Error::new(ErrorKind::TooLarge, format!("The remote file is larger than {max} bytes"))
            }
            BodyError::Http(e) => failed(e.to_string()),
        })?;
        let mut content = Content::new(file, String::new(), ContentDisposition::new(Default::default()));
        content.content_type = content_type;
        content.content_disposition = disposition;
        Ok(content)
    }

    /// `GET /media/download`: the file, its content type and file name.
    pub async fn download_media(&self, server: &ServerName, media_id: &str, timeout: Duration) -> Result<Download> {
        let media = self.uploaded_media(server, media_id, timeout).await?;
        let bytes = self.files.read(media.sha256.as_deref().unwrap_or_default()).await?;
        Ok(Download {
            bytes,
            content_type: media.content_type.unwrap_or_else(|| "application/octet-stream".to_owned()),
            filename: media.filename,
        })
    }

    /// `GET /media/thumbnail`: a thumbnail at least as large as asked where the server's sizes
    /// allow, made once and then served from the cache.
    pub async fn thumbnail(
        &self,
        server: &ServerName,
        media_id: &str,
        width: u64,
        height: u64,
        method: ThumbnailMethod,
        timeout: Duration,
    ) -> Result<Download> {
        if width == 0 || height == 0 {
            return Err(Error::invalid_param("Thumbnail width and height must be positive"));
        }
        let media = self.uploaded_media(server, media_id, timeout).await?;
        let (tw, th, crop) = pick_size(width, height, method);
        let method_name = if crop { "crop" } else { "scale" };
        let origin = server.as_str();
        if let Some(t) =
            store::get_thumbnail(self.db.pool(), origin, media_id, tw.into(), th.into(), method_name).await?
        {
            let bytes = self.files.read(&t.sha256).await?;
            let filename = Some(thumbnail_name(&t.content_type));
            return Ok(Download { bytes, content_type: t.content_type, filename });
        }
        if media.size.unwrap_or(0) as u64 > self.config.media.max_upload_bytes {
            return Err(Error::new(ErrorKind::TooLarge, "Content is too large to thumbnail"));
        }
        let source = self.files.read(media.sha256.as_deref().unwrap_or_default()).await?;
        let max_pixels = self.config.media.max_thumbnail_source_pixels;
        let (bytes, content_type) =
            tokio::task::spawn_blocking(move || make_thumbnail(&source, tw, th, crop, max_pixels))
                .await
                .map_err(crate::internal!())??;
        let sha256 = self.files.store(&bytes).await?;
        let thumbnail = Thumbnail {
            width: tw.into(),
            height: th.into(),
            method: method_name.to_owned(),
            content_type: content_type.to_owned(),
            sha256,
            size: bytes.len() as i64,
        };
        store::insert_thumbnail(self.db.pool(), origin, media_id, &thumbnail).await?;
        Ok(Download { bytes, content_type: content_type.to_owned(), filename: Some(thumbnail_name(content_type)) })
    }
}

fn thumbnail_name(content_type: &str) -> String {
    format!("thumbnail.{}", if content_type == "image/png" { "png" } else { "jpg" })
}

/// The server size for a requested one: the smallest of the method's sizes that covers the
/// request, or the largest of them.
fn pick_size(width: u64, height: u64, method: ThumbnailMethod) -> (u32, u32, bool) {
    let crop = method == ThumbnailMethod::Crop;
    let mut sizes = THUMBNAIL_SIZES.iter().filter(|s| s.2 == crop);
    let covering = sizes.clone().find(|(w, h, _)| u64::from(*w) >= width && u64::from(*h) >= height);
    *covering.or_else(|| sizes.next_back()).expect("each method has sizes")
}

/// Decodes an image and resizes it: `crop` fills exactly `width`×`height`, cutting what
/// overflows; scaling fits the image inside, keeping its aspect ratio, never enlarging it.
/// Images with transparency become PNG, others JPEG.
fn make_thumbnail(
    source: &[u8],
    width: u32,
    height: u32,
    crop: bool,
    max_pixels: u64,
) -> Result<(Vec<u8>, &'static str)> {
    use image::{imageops::FilterType, ImageFormat, ImageReader};
    let cannot = || Error::new(ErrorKind::Unknown, "Cannot generate thumbnails for the requested content");
    let reader = || ImageReader::new(Cursor::new(source)).with_guessed_format().map_err(|_| cannot());
    let (w, h) = reader()?.into_dimensions().map_err(|_| cannot())?;
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(Error::new(ErrorKind::TooLarge, "Content is too large to thumbnail"));
    }
    let image = reader()?.decode().map_err(|_| cannot())?;
    let resized = if crop {
        image.resize_to_fill(width, height, FilterType::Triangle)
    } else if w <= width && h <= height {
        image
    } else {
        image.resize(width, height, FilterType::Triangle)
    };
    let mut out = Cursor::new(Vec::new());
    let content_type = if resized.color().has_alpha() {
        resized.write_to(&mut out, ImageFormat::Png).map_err(|_| cannot())?;
        "image/png"
    } else {
        image::DynamicImage::ImageRgb8(resized.to_rgb8())
            .write_to(&mut out, ImageFormat::Jpeg)
            .map_err(|_| cannot())?;
        "image/jpeg"
    };
    Ok((out.into_inner(), content_type))
}

/// The media an event's content carries (`url`, `file.url`, and their thumbnails'), as
/// (server, media id).
pub(crate) fn media_of(content: &serde_json::Value) -> Vec<(String, String)> {
    let uris = [
        &content["url"],
        &content["file"]["url"],
        &content["info"]["thumbnail_url"],
        &content["info"]["thumbnail_file"]["url"],
    ];
    let mut out = Vec::new();
    for uri in uris.into_iter().filter_map(serde_json::Value::as_str) {
        let mxc = ruma::OwnedMxcUri::from(uri);
        if let Ok((server, media_id)) = mxc.parts() {
            out.push((server.to_string(), media_id.to_owned()));
        }
    }
    out
}

impl Repository {
    /// Deletes a local media item: its rows, then its files when nothing else uses them.
    /// Answers whether it existed.
    pub(crate) async fn delete_local(&self, media_id: &str) -> Result<bool> {
        use diplomatie_storage::retention as rstore;
        let mut tx = self.db.begin_write().await?;
        let files = rstore::delete_media(&mut tx, self.server_name().as_str(), media_id).await?;
        store::unquarantine(&mut *tx, self.server_name().as_str(), media_id).await?;
        store::set_protected(&mut *tx, media_id, false).await?;
        diplomatie_storage::commit(tx).await?;
        let existed = !files.is_empty();
        for file in files {
            if !rstore::file_in_use(self.db.pool(), &file).await? {
                self.files.remove(&file).await;
            }
        }
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_cover_the_request_when_they_can() {
        assert_eq!(pick_size(30, 30, ThumbnailMethod::Crop), (32, 32, true));
        assert_eq!(pick_size(64, 64, ThumbnailMethod::Crop), (96, 96, true));
        assert_eq!(pick_size(500, 500, ThumbnailMethod::Crop), (96, 96, true));
        assert_eq!(pick_size(320, 240, ThumbnailMethod::Scale), (320, 240, false));
        assert_eq!(pick_size(600, 300, ThumbnailMethod::Scale), (640, 480, false));
        assert_eq!(pick_size(4000, 4000, ThumbnailMethod::Scale), (800, 600, false));
    }

    fn png(w: u32, h: u32, alpha: bool) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        let image = if alpha {
            image::DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(w, h, image::Rgba([10, 20, 30, 128])))
        } else {
            image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(w, h, image::Rgb([10, 20, 30])))
        };
        image.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn dimensions(bytes: &[u8]) -> (u32, u32) {
        image::ImageReader::new(Cursor::new(bytes)).with_guessed_format().unwrap().into_dimensions().unwrap()
    }

    #[test]
    fn crop_fills_and_scale_keeps_the_aspect_ratio() {
        let source = png(1000, 500, false);
        let (crop, ct) = make_thumbnail(&source, 96, 96, true, u64::MAX).unwrap();
        assert_eq!((dimensions(&crop), ct), ((96, 96), "image/jpeg"));
        let (scale, _) = make_thumbnail(&source, 320, 240, false, u64::MAX).unwrap();
        assert_eq!(dimensions(&scale), (320, 160));
        // Never enlarged.
        let (small, _) = make_thumbnail(&png(50, 40, false), 320, 240, false, u64::MAX).unwrap();
        assert_eq!(dimensions(&small), (50, 40));
        // Transparency survives as PNG.
        let (_, ct) = make_thumbnail(&png(64, 64, true), 32, 32, true, u64::MAX).unwrap();
        assert_eq!(ct, "image/png");
    }

    #[test]
    fn what_is_not_an_image_or_too_large_is_refused() {
        let not_image = make_thumbnail(b"%PDF-1.7 not an image", 32, 32, true, u64::MAX).unwrap_err();
        assert!(matches!(not_image, Error::Matrix(ErrorKind::Unknown, _)));
        let bomb = make_thumbnail(&png(1000, 1000, false), 32, 32, true, 999_999).unwrap_err();
        assert!(matches!(bomb, Error::Matrix(ErrorKind::TooLarge, _)));
    }

    #[test]
    fn only_safe_types_are_inline() {
        assert!(is_inline("image/png"));
        assert!(is_inline("text/plain; charset=utf-8"));
        assert!(!is_inline("text/html"));
        assert!(!is_inline("image/svg+xml"));
        assert!(!is_inline("application/pdf"));
    }
}
