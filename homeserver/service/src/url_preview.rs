//! URL previews (client-server spec, `GET /media/preview_url`): the server fetches a page on a
//! user's behalf and answers its OpenGraph data.
//!
//! Off unless configured. A server that fetches arbitrary URLs can be turned against the
//! network it sits in (server-side request forgery), so every address a host name resolves to
//! is checked before any connection is made, for the first request and for every redirect:
//! loopback, private, link-local, carrier-grade NAT, unique-local, multicast and unspecified
//! addresses are refused unless an operator allows their range explicitly. The check sits in
//! the resolver the HTTP client connects with, so a host cannot pass it with one address and
//! connect with another (DNS rebinding). Size and time are bounded.

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use ipnet::IpNet;
use ruma::{api::error::ErrorKind, UserId};
use serde_json::{Map, Value};

use crate::{
    core::Core,
    media::Repository,
    now_ms,
    outbound::{literal_is_forbidden, read_limited, was_blocked, BodyError},
    Error, Result,
};

/// How long a preview is served from memory before the page is fetched again.
const CACHE_MS: i64 = 3600 * 1000;

/// URL previews: their HTTP client and cache; the images they find are stored as media.
pub struct Previews {
    core: Arc<Core>,
    media: Arc<Repository>,
    client: OnceLock<crate::outbound::Client>,
    cache: Mutex<Option<lru::LruCache<String, (i64, Value)>>>,
}

crate::core::over_core!(Previews);

impl Previews {
    pub(crate) fn new(core: Arc<Core>, media: Arc<Repository>) -> Previews {
        Previews { core, media, client: OnceLock::new(), cache: Mutex::new(None) }
    }

    fn preview_allowlist(&self) -> Result<Arc<Vec<IpNet>>> {
        crate::outbound::parse_allowlist("url_preview.ip_range_allowlist", &self.config.url_preview.ip_range_allowlist)
    }

    fn preview_client(&self) -> Result<&crate::outbound::Client> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let timeout = Duration::from_millis(self.config.url_preview.timeout_ms);
        let client = crate::outbound::client(&self.config.outbound, self.preview_allowlist()?, timeout, "URL preview")?;
        Ok(self.client.get_or_init(|| client))
    }

    /// `GET /media/preview_url`: the OpenGraph data of a page, its image stored as media.
    pub async fn preview_url(&self, user: &UserId, url: &str) -> Result<Value> {
        if !self.config.url_preview.enabled {
            return Err(Error::unrecognized("URL previews are disabled on this server"));
        }
        let parsed = reqwest::Url::parse(url).map_err(|e| Error::invalid_param(format!("Invalid URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::invalid_param("Only http and https URLs can be previewed"));
        }
        let now = now_ms();
        if let Some((at, v)) = self.cache.lock().unwrap().as_mut().and_then(|c| c.get(url).cloned()) {
            if now - at < CACHE_MS {
                return Ok(v);
            }
        }
        let (bytes, content_type) = self.fetch_for_preview(&parsed).await?;
        let mut og = Map::new();
        if content_type.starts_with("image/") {
            self.store_preview_image(user, &bytes, &content_type, &mut og).await?;
        } else if content_type.starts_with("text/html") || content_type.starts_with("application/xhtml") {
            og = parse_opengraph(&bytes);
            let image = og.get("og:image").and_then(Value::as_str).and_then(|i| parsed.join(i).ok());
            og.remove("og:image");
            if let Some(image) = image {
                // The page's image is optional: a failure leaves the preview without it.
                if let Ok((bytes, ct)) = self.fetch_for_preview(&image).await {
                    if ct.starts_with("image/") {
                        let _ = self.store_preview_image(user, &bytes, &ct, &mut og).await;
                    }
                }
            }
        }
        let value = Value::Object(og);
        let mut cache = self.cache.lock().unwrap();
        let cache = cache.get_or_insert_with(|| crate::lru(256));
        cache.put(url.to_owned(), (now, value.clone()));
        Ok(value)
    }

    /// Fetches a URL within the configured limits: the body and its content type.
    async fn fetch_for_preview(&self, url: &reqwest::Url) -> Result<(Vec<u8>, String)> {
        let allowed = self.preview_allowlist()?;
        let blocked = || Error::forbidden("Previews of this address are not allowed");
        if literal_is_forbidden(url, &allowed) {
            return Err(blocked());
        }
        let max = self.config.url_preview.max_bytes;
        let too_large = || Error::new(ErrorKind::TooLarge, format!("The content is larger than {max} bytes"));
        let failed = |e: reqwest::Error| {
            if was_blocked(&e) {
                return blocked();
            }
            Error::new(ErrorKind::Unknown, format!("Could not fetch the URL: {e}"))
        };
        let response = self.preview_client()?.get(url.clone()).send().await.map_err(failed)?;
        if !response.status().is_success() {
            return Err(Error::new(ErrorKind::Unknown, format!("The URL answered {}", response.status())));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_ascii_lowercase();
        let body = read_limited(response, max).await.map_err(|e| match e {
            BodyError::TooLarge => too_large(),
            BodyError::Http(e) => failed(e),
        })?;
        Ok((body, content_type))
    }

    /// Stores a fetched image as the user's media and describes it in `og`.
    async fn store_preview_image(
        &self,
        user: &UserId,
        bytes: &[u8],
        content_type: &str,
        og: &mut Map<String, Value>,
    ) -> Result<()> {
        let mxc = self.media.upload_media(user, crate::media::Upload::Bytes(bytes), Some(content_type), None).await?;
        og.insert("og:image".into(), mxc.to_string().into());
        og.insert("og:image:type".into(), content_type.into());
        og.insert("matrix:image:size".into(), bytes.len().into());
        if let Ok((w, h)) = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|_| ())
            .and_then(|r| r.into_dimensions().map_err(|_| ()))
        {
            og.insert("og:image:width".into(), w.into());
            og.insert("og:image:height".into(), h.into());
        }
        Ok(())
    }
}

/// The OpenGraph properties of an HTML page (`<meta property="og:…">`), with the page's
/// `<title>` and description standing in for missing `og:title` and `og:description`.
pub fn parse_opengraph(html: &[u8]) -> Map<String, Value> {
    use html5gum::{Token, Tokenizer};
    let mut og = Map::new();
    let mut title: Option<String> = None;
    let mut description: Option<String> = None;
    let mut in_title = false;
    for Ok(token) in Tokenizer::new(html) {
        match token {
            Token::StartTag(tag) => {
                let name = String::from_utf8_lossy(&tag.name).to_ascii_lowercase();
                in_title = name == "title" && title.is_none();
                if name == "body" {
                    break;
                }
                if name != "meta" {
                    continue;
                }
                let attr = |k: &str| {
                    tag.attributes
                        .iter()
                        .find(|(key, _)| key.eq_ignore_ascii_case(k.as_bytes()))
                        .map(|(_, v)| String::from_utf8_lossy(&v.value).trim().to_owned())
                };
                let key = attr("property").or_else(|| attr("name")).unwrap_or_default().to_ascii_lowercase();
                let Some(content) = attr("content").filter(|c| !c.is_empty()) else { continue };
                if key.starts_with("og:") {
                    og.entry(key).or_insert(Value::String(content));
                } else if key == "description" {
                    description.get_or_insert(content);
                }
            }
            Token::String(text) if in_title => {
                let text = String::from_utf8_lossy(&text.value).trim().to_owned();
                if !text.is_empty() {
                    title = Some(text);
                }
            }
            Token::EndTag(_) => in_title = false,
            _ => {}
        }
    }
    if let Some(t) = title {
        og.entry("og:title").or_insert(Value::String(t));
    }
    if let Some(d) = description {
        og.entry("og:description").or_insert(Value::String(d));
    }
    og
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opengraph_with_fallbacks() {
        let html = br#"<!doctype html><html><head><title> La page </title>
            <meta property="og:title" content="Titre OG"><meta name="description" content="Desc">
            <META PROPERTY="og:site_name" CONTENT="Quai"><meta property="og:image" content="/i.png">
            </head><body><meta property="og:title" content="ignored"></body></html>"#;
        let og = parse_opengraph(html);
        assert_eq!(og["og:title"], "Titre OG");
        assert_eq!(og["og:description"], "Desc");
        assert_eq!(og["og:site_name"], "Quai");
        assert_eq!(og["og:image"], "/i.png");
        let og = parse_opengraph(b"<html><head><title>Only a title</title></head></html>");
        assert_eq!(og["og:title"], "Only a title");
        assert_eq!(og.len(), 1);
    }
}
