//! The content repository (client-server spec, "Content repository"): uploads, authenticated
//! downloads and thumbnails, asynchronous uploads, limits and quotas, URL previews.

use std::io::Cursor;

use diplomatie_tests::{assert_error, backend_tests, Backend, Client, TestServer};
use serde_json::{json, Value};

backend_tests!(
    uploads_are_downloaded_and_thumbnailed,
    uploads_are_checked_and_refusals_keep_nothing,
    created_media_ids_wait_for_their_upload,
    url_previews_are_off_by_default_and_never_reach_internal_addresses,
);

/// A PNG image of `w`×`h` pixels.
fn png(w: u32, h: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]));
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image).write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn dimensions(bytes: &[u8]) -> (u32, u32) {
    image::ImageReader::new(Cursor::new(bytes)).with_guessed_format().unwrap().into_dimensions().unwrap()
}

/// A raw HTTP exchange: status, headers and body bytes.
struct Raw {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }
    fn error(&self) -> (u16, Value) {
        (self.status, self.json())
    }
}

async fn send(c: &Client, method: reqwest::Method, path: &str, body: Option<(&str, Vec<u8>)>, auth: bool) -> Raw {
    let mut req = c.http.request(method, format!("{}{}", c.base, path));
    if auth {
        req = req.bearer_auth(c.token.as_deref().unwrap());
    }
    if let Some((content_type, bytes)) = body {
        if !content_type.is_empty() {
            req = req.header("content-type", content_type);
        }
        req = req.body(bytes);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    Raw { status, headers, body: resp.bytes().await.unwrap().to_vec() }
}

async fn get(c: &Client, path: &str) -> Raw {
    send(c, reqwest::Method::GET, path, None, true).await
}

/// Uploads and returns the `mxc://` URI's server/id part.
async fn upload(c: &Client, content_type: &str, bytes: Vec<u8>, filename: &str) -> String {
    let path = format!("/_matrix/media/v3/upload?filename={filename}");
    let r = send(c, reqwest::Method::POST, &path, Some((content_type, bytes)), true).await;
    assert_eq!(r.status, 200, "{}", r.json());
    let uri = r.json()["content_uri"].as_str().unwrap().to_owned();
    uri.strip_prefix("mxc://").expect("an mxc URI").to_owned()
}

async fn uploads_are_downloaded_and_thumbnailed(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;

    let config = get(&alice, "/_matrix/client/v1/media/config").await;
    assert_eq!(config.json()["m.upload.size"], 50 * 1024 * 1024);

    let image = png(1000, 500);
    let id = upload(&alice, "image/png", image.clone(), "carte.png").await;
    assert!(id.starts_with("localhost/"));

    // Any user of the server downloads it, with its type and name, inline (a safe type).
    let d = get(&bob, &format!("/_matrix/client/v1/media/download/{id}")).await;
    assert_eq!(d.status, 200);
    assert_eq!(d.body, image);
    assert_eq!(d.header("content-type"), "image/png");
    assert_eq!(d.header("content-disposition"), "inline; filename=carte.png");
    assert!(d.header("content-security-policy").contains("sandbox"));
    assert_eq!(d.header("cross-origin-resource-policy"), "cross-origin");
    let d = get(&bob, &format!("/_matrix/client/v1/media/download/{id}/autre.png")).await;
    assert_eq!((d.status, d.header("content-disposition")), (200, "inline; filename=autre.png"));

    // Thumbnails: crop fills the size, scale keeps the aspect ratio; the second time comes
    // from the cache, byte for byte.
    let t = get(&bob, &format!("/_matrix/client/v1/media/thumbnail/{id}?width=96&height=96&method=crop")).await;
    assert_eq!(t.status, 200);
    assert_eq!(t.header("content-type"), "image/jpeg");
    assert!(t.header("content-disposition").starts_with("inline"));
    assert_eq!(dimensions(&t.body), (96, 96));
    let t2 = get(&bob, &format!("/_matrix/client/v1/media/thumbnail/{id}?width=96&height=96&method=crop")).await;
    assert_eq!(t2.body, t.body);
    let t = get(&bob, &format!("/_matrix/client/v1/media/thumbnail/{id}?width=300&height=200&method=scale")).await;
    assert_eq!(dimensions(&t.body), (320, 160));

    // Unsafe types are attachments.
    let html = upload(&alice, "text/html", b"<script>alert(1)</script>".to_vec(), "page.html").await;
    let d = get(&bob, &format!("/_matrix/client/v1/media/download/{html}")).await;
    assert_eq!(d.header("content-disposition"), "attachment; filename=page.html");
    // No type given: served as bytes.
    let none = upload(&alice, "", b"raw".to_vec(), "x").await;
    let d = get(&bob, &format!("/_matrix/client/v1/media/download/{none}")).await;
    assert_eq!(d.header("content-type"), "application/octet-stream");

    // Authenticated media needs a token; the deprecated unauthenticated downloads are frozen.
    let anon =
        send(&alice, reqwest::Method::GET, &format!("/_matrix/client/v1/media/download/{id}"), None, false).await;
    assert_error(&anon.error(), 401, "M_MISSING_TOKEN");
    let legacy = send(&alice, reqwest::Method::GET, &format!("/_matrix/media/v3/download/{id}"), None, false).await;
    assert_error(&legacy.error(), 404, "M_NOT_FOUND");

    // Files survive a restart.
    let mut server = server;
    server.kill().await;
    server.launch().await;
    let mut bob = bob;
    bob.base = server.base.clone();
    let d = get(&bob, &format!("/_matrix/client/v1/media/download/{id}")).await;
    assert_eq!(d.body, image);
}

async fn uploads_are_checked_and_refusals_keep_nothing(backend: Backend) {
    let server = TestServer::start(
        backend,
        &[
            ("MEDIA__MAX_UPLOAD_BYTES", "4000"),
            ("MEDIA__USER_QUOTA_BYTES", "6000"),
            ("MEDIA__REFUSED_CONTENT_TYPES", "[\"application/x-msdownload\"]"),
            ("MEDIA__LEGACY_DOWNLOADS", "true"),
        ],
    )
    .await;
    let alice = server.register("alice").await;
    let post = |ct: &'static str, bytes: Vec<u8>| {
        let alice = alice.clone();
        async move { send(&alice, reqwest::Method::POST, "/_matrix/media/v3/upload", Some((ct, bytes)), true).await }
    };
    assert_error(&post("text/plain", vec![b'a'; 4001]).await.error(), 413, "M_TOO_LARGE");
    assert_error(&post("not a type", b"x".to_vec()).await.error(), 400, "M_INVALID_PARAM");
    assert_error(&post("application/x-msdownload", b"MZ".to_vec()).await.error(), 403, "M_FORBIDDEN");
    // The quota counts what was stored: 3000 + 3000 fit, 1 more byte does not.
    assert_eq!(post("text/plain", vec![b'a'; 3000]).await.status, 200);
    let second = post("text/plain", vec![b'b'; 3000]).await;
    assert_eq!(second.status, 200);
    assert_error(&post("text/plain", vec![b'c'; 1]).await.error(), 400, "M_RESOURCE_LIMIT_EXCEEDED");

    let missing = get(&alice, "/_matrix/client/v1/media/download/localhost/nothere").await;
    assert_error(&missing.error(), 404, "M_NOT_FOUND");
    let remote = get(&alice, "/_matrix/client/v1/media/download/elsewhere.example/abc").await;
    assert_error(&remote.error(), 404, "M_NOT_FOUND");
    let text_id = second.json()["content_uri"].as_str().unwrap().trim_start_matches("mxc://").to_owned();
    for query in ["width=0&height=32", "width=-3&height=32", "width=abc&height=32", "height=32"] {
        let t = get(&alice, &format!("/_matrix/client/v1/media/thumbnail/{text_id}?{query}")).await;
        assert_eq!(t.status, 400, "{query}: {}", t.json());
        assert!(["M_INVALID_PARAM", "M_MISSING_PARAM"].contains(&t.json()["errcode"].as_str().unwrap()), "{query}");
    }
    // Text cannot be thumbnailed: the spec's 400 M_UNKNOWN.
    let t = get(&alice, &format!("/_matrix/client/v1/media/thumbnail/{text_id}?width=32&height=32")).await;
    assert_error(&t.error(), 400, "M_UNKNOWN");
    // With legacy downloads kept, the deprecated endpoint serves without a token.
    let legacy =
        send(&alice, reqwest::Method::GET, &format!("/_matrix/media/v3/download/{text_id}"), None, false).await;
    assert_eq!((legacy.status, legacy.body), (200, vec![b'b'; 3000]));
}

async fn created_media_ids_wait_for_their_upload(backend: Backend) {
    let server = TestServer::start(backend, &[("MEDIA__MAX_PENDING_UPLOADS", "2")]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let created = alice.post("/_matrix/media/v1/create", &json!({})).await;
    assert_eq!(created.0, 200, "{}", created.1);
    assert!(created.1["unused_expires_at"].as_u64().unwrap() > 0);
    let id = created.1["content_uri"].as_str().unwrap().trim_start_matches("mxc://").to_owned();

    // Not uploaded yet: a download waits for its timeout, then answers 504.
    let early = get(&bob, &format!("/_matrix/client/v1/media/download/{id}?timeout_ms=200")).await;
    assert_error(&early.error(), 504, "M_NOT_YET_UPLOADED");

    // Only its creator uploads it.
    let put = |c: &Client, bytes: &'static [u8]| {
        let (c, path) = (c.clone(), format!("/_matrix/media/v3/upload/{id}"));
        async move { send(&c, reqwest::Method::PUT, &path, Some(("text/plain", bytes.to_vec())), true).await }
    };
    assert_error(&put(&bob, b"intrus").await.error(), 403, "M_FORBIDDEN");

    // A download waiting when the upload lands gets the content.
    let waiting = {
        let (bob, path) = (bob.clone(), format!("/_matrix/client/v1/media/download/{id}?timeout_ms=10000"));
        tokio::spawn(async move { get(&bob, &path).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(put(&alice, b"contenu").await.status, 200);
    let got = waiting.await.unwrap();
    assert_eq!((got.status, got.body.as_slice()), (200, &b"contenu"[..]));
    assert_error(&put(&alice, b"encore").await.error(), 403, "M_CANNOT_OVERWRITE_MEDIA");

    // At most two ids wait for an upload at once.
    assert_eq!(alice.post("/_matrix/media/v1/create", &json!({})).await.0, 200);
    assert_eq!(alice.post("/_matrix/media/v1/create", &json!({})).await.0, 200);
    assert_error(&alice.post("/_matrix/media/v1/create", &json!({})).await, 429, "M_LIMIT_EXCEEDED");
    let unknown = send(
        &alice,
        reqwest::Method::PUT,
        "/_matrix/media/v3/upload/localhost/nope",
        Some(("text/plain", b"x".to_vec())),
        true,
    )
    .await;
    assert_error(&unknown.error(), 404, "M_NOT_FOUND");
}

/// A one-shot web server on loopback for previews: answers every request with `page` (HTML)
/// except `/image.png`, and stops with the test.
async fn web_server(page: String, image: Vec<u8>) -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (page, image) = (page.clone(), image.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let (ct, body) = if request.starts_with("GET /image.png") {
                    ("image/png", image)
                } else {
                    ("text/html; charset=utf-8", page.into_bytes())
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {ct}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&body).await;
            });
        }
    });
    (port, task)
}

async fn url_previews_are_off_by_default_and_never_reach_internal_addresses(backend: Backend) {
    let page = r#"<html><head><title>Quai d'Orsay</title><meta property="og:description" content="Le ministère">
        <meta property="og:image" content="/image.png"></head><body>x</body></html>"#;
    let (port, _web) = web_server(page.to_owned(), png(64, 48)).await;
    let url = format!("http://127.0.0.1:{port}/page");
    let path = format!("/_matrix/client/v1/media/preview_url?url={}", diplomatie_tests::urlencode(&url));

    let off = TestServer::start(backend, &[]).await;
    let alice = off.register("alice").await;
    assert_error(&get(&alice, &path).await.error(), 404, "M_UNRECOGNIZED");
    drop(off);

    // On, but loopback is never fetched: by literal address or by a name resolving to it.
    let on = TestServer::start(backend, &[("URL_PREVIEW__ENABLED", "true")]).await;
    let alice = on.register("alice").await;
    assert_error(&get(&alice, &path).await.error(), 403, "M_FORBIDDEN");
    let by_name = format!("/_matrix/client/v1/media/preview_url?url=http%3A%2F%2Flocalhost%3A{port}%2F");
    assert_error(&get(&alice, &by_name).await.error(), 403, "M_FORBIDDEN");
    let bad = get(&alice, "/_matrix/client/v1/media/preview_url?url=file%3A%2F%2F%2Fetc%2Fpasswd").await;
    assert_error(&bad.error(), 400, "M_INVALID_PARAM");
    drop(on);

    // With loopback allowed by the operator, the page's OpenGraph data and its image.
    let allowed = TestServer::start(
        backend,
        &[("URL_PREVIEW__ENABLED", "true"), ("URL_PREVIEW__IP_RANGE_ALLOWLIST", "[\"127.0.0.1/32\"]")],
    )
    .await;
    let alice = allowed.register("alice").await;
    let preview = get(&alice, &path).await;
    assert_eq!(preview.status, 200, "{}", preview.json());
    let og = preview.json();
    assert_eq!(og["og:title"], "Quai d'Orsay");
    assert_eq!(og["og:description"], "Le ministère");
    assert_eq!((og["og:image:width"].as_u64(), og["og:image:height"].as_u64()), (Some(64), Some(48)));
    let image = og["og:image"].as_str().unwrap().trim_start_matches("mxc://").to_owned();
    let d = get(&alice, &format!("/_matrix/client/v1/media/download/{image}")).await;
    assert_eq!(dimensions(&d.body), (64, 48));
    drop(allowed);

    // Pages over the size limit are refused.
    let small = TestServer::start(
        backend,
        &[
            ("URL_PREVIEW__ENABLED", "true"),
            ("URL_PREVIEW__IP_RANGE_ALLOWLIST", "[\"127.0.0.1/32\"]"),
            ("URL_PREVIEW__MAX_BYTES", "100"),
        ],
    )
    .await;
    let alice = small.register("alice").await;
    assert_error(&get(&alice, &path).await.error(), 413, "M_TOO_LARGE");
}
