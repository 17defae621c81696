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
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use ipnet::IpNet;
use ruma::{api::error::ErrorKind, UserId};
use serde_json::{Map, Value};

use crate::{now_ms, Error, Result, Services};

/// How long a preview is served from memory before the page is fetched again.
const CACHE_MS: i64 = 3600 * 1000;

/// The HTTP client of previews and its cache.
#[derive(Default)]
pub struct Previews {
    client: OnceLock<reqwest::Client>,
    cache: Mutex<Option<lru::LruCache<String, (i64, Value)>>>,
}

/// Whether an address is one a preview must never reach, unless `allowed` names its range.
pub fn is_forbidden(ip: IpAddr, allowed: &[IpNet]) -> bool {
    if allowed.iter().any(|net| net.contains(&ip)) {
        return false;
    }
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
                || (a == 198 && (b == 18 || b == 19)) // benchmarking
                || a >= 240 // reserved
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_forbidden(IpAddr::V4(v4), allowed);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link local
                || (first & 0xffc0) == 0xfec0 // site local (deprecated)
                || first == 0x2001 && v6.segments()[1] == 0x0db8 // documentation
                || first == 0x0064 && v6.segments()[1] == 0xff9b // NAT64 to IPv4 space
        }
    }
}

/// The resolver the preview client connects through: it drops forbidden addresses, and fails
/// with [`Blocked`] when none is left.
struct CheckingResolver {
    allowed: Arc<Vec<IpNet>>,
}

/// A host that resolves only to forbidden addresses.
#[derive(Debug)]
struct Blocked;

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the host resolves only to addresses previews may not reach")
    }
}

impl std::error::Error for Blocked {}

impl reqwest::dns::Resolve for CheckingResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allowed = self.allowed.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|a| !is_forbidden(a.ip(), &allowed))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(Blocked) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether a URL names a forbidden address literally (literals bypass the resolver).
fn literal_is_forbidden(url: &reqwest::Url, allowed: &[IpNet]) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => is_forbidden(IpAddr::V4(ip), allowed),
        Some(url::Host::Ipv6(ip)) => is_forbidden(IpAddr::V6(ip), allowed),
        Some(url::Host::Domain(_)) => false,
        None => true,
    }
}

impl Services {
    fn preview_allowlist(&self) -> Result<Arc<Vec<IpNet>>> {
        let nets = self.config.url_preview.ip_range_allowlist.iter().map(|r| {
            r.parse::<IpNet>().or_else(|_| r.parse::<IpAddr>().map(IpNet::from)).map_err(|_| {
                tracing::error!(range = %r, "url_preview.ip_range_allowlist: not an address range");
                Error::Internal
            })
        });
        Ok(Arc::new(nets.collect::<Result<Vec<_>>>()?))
    }

    fn preview_client(&self) -> Result<&reqwest::Client> {
        if let Some(c) = self.previews.client.get() {
            return Ok(c);
        }
        let allowed = self.preview_allowlist()?;
        let for_redirects = allowed.clone();
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(CheckingResolver { allowed }))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 5 {
                    attempt.error("too many redirects")
                } else if literal_is_forbidden(attempt.url(), &for_redirects) {
                    attempt.error(Blocked)
                } else {
                    attempt.follow()
                }
            }))
            .timeout(Duration::from_millis(self.config.url_preview.timeout_ms))
            .user_agent(concat!("Diplomatie/", env!("CARGO_PKG_VERSION"), " (URL preview)"))
            .build()
            .map_err(|e| {
                tracing::error!(error = %e, "cannot build the URL preview client");
                Error::Internal
            })?;
        Ok(self.previews.client.get_or_init(|| client))
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
        if let Some((at, v)) = self.previews.cache.lock().unwrap().as_mut().and_then(|c| c.get(url).cloned()) {
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
        let mut cache = self.previews.cache.lock().unwrap();
        let cache = cache.get_or_insert_with(|| lru::LruCache::new(std::num::NonZeroUsize::new(256).unwrap()));
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
            let mut source: Option<&dyn std::error::Error> = Some(&e);
            while let Some(s) = source {
                if s.is::<Blocked>() {
                    return blocked();
                }
                source = s.source();
            }
            Error::new(ErrorKind::Unknown, format!("Could not fetch the URL: {e}"))
        };
        let mut response = self.preview_client()?.get(url.clone()).send().await.map_err(failed)?;
        if !response.status().is_success() {
            return Err(Error::new(ErrorKind::Unknown, format!("The URL answered {}", response.status())));
        }
        if response.content_length().is_some_and(|n| n > max) {
            return Err(too_large());
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_ascii_lowercase();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if body.len() as u64 + chunk.len() as u64 > max {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
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
        let mxc = self.upload_media(user, bytes, Some(content_type), None).await?;
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
    fn internal_addresses_are_forbidden_unless_allowed() {
        let none: &[IpNet] = &[];
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "224.0.0.1",
        ] {
            assert!(is_forbidden(ip.parse().unwrap(), none), "{ip} must be forbidden");
        }
        for ip in ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "8.8.8.8"] {
            assert!(!is_forbidden(ip.parse().unwrap(), none), "{ip} is public");
        }
        let allowed: Vec<IpNet> = vec!["127.0.0.1/32".parse().unwrap()];
        assert!(!is_forbidden("127.0.0.1".parse().unwrap(), &allowed));
        assert!(is_forbidden("127.0.0.2".parse().unwrap(), &allowed));
    }

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
