//! What an attacker on the network, a careless partner or a manager can do: each scenario
//! probes one defect found by black-box probing of the server, and fails on the behaviour
//! that was there before its fix (request bodies read whole before any check, connections
//! never timed out, federation aimed at internal addresses by an unsigned request, a manager
//! clearing themselves, YAML alias bombs, panics, NUL characters, LIKE patterns, leaked search
//! counts, plain-text errors).

use std::time::{Duration, Instant};

use diplomatie_tests::{assert_error, backend_tests, urlencode, Backend, Client, TestServer};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

backend_tests!(
    bodies_are_refused_before_they_are_read,
    uploads_go_to_disk_and_are_bounded,
    slow_and_idle_connections_are_closed,
    idle_connections_from_one_address_leave_others_served,
    federation_never_reaches_internal_addresses,
    nobody_raises_their_own_clearance,
    hostile_organisation_files_are_refused,
    login_without_a_type_is_a_client_error,
    nul_characters_are_refused_alike,
    user_directory_terms_are_literal_and_bounded,
    search_counts_only_what_the_user_may_read,
    every_error_is_a_matrix_error,
);

/// Sends `request` on a new connection and reads until the server closes it or `wait` passes.
/// Answers what was read and whether the server closed the connection.
async fn exchange(addr: &str, request: &[u8], wait: Duration) -> (String, bool) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    read_until_closed(&mut stream, wait).await
}

async fn read_until_closed(stream: &mut TcpStream, wait: Duration) -> (String, bool) {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

/// Sends `head` then `count` chunks of `size` bytes (chunked encoding), reading the answer
/// while it writes: the server answers as soon as the body passes its limit and closes the
/// connection, and the rest of the body is never read.
async fn chunked(addr: &str, head: &str, size: usize, count: usize) -> String {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    write.write_all(head.as_bytes()).await.expect("write the head");
    let writer = tokio::spawn(async move {
        let chunk = vec![b' '; size];
        let framed = [format!("{size:x}\r\n").as_bytes(), &chunk, b"\r\n"].concat();
        for _ in 0..count {
            if write.write_all(&framed).await.is_err() {
                return;
            }
        }
        let _ = write.write_all(b"0\r\n\r\n").await;
    });
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, read.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                out.extend_from_slice(&buf[..n]);
                // The head and a short JSON body are all there is to read.
                if out.windows(4).any(|w| w == b"\r\n\r\n") && out.ends_with(b"}") {
                    break;
                }
            }
            _ => break,
        }
    }
    writer.abort();
    String::from_utf8_lossy(&out).into_owned()
}

/// Declares a body of `len` bytes without sending it, and answers the server's response: a
/// body over the limit is refused from its headers (a client that sent it would find the
/// connection closed under it).
async fn declared(server: &TestServer, method: &str, path: &str, token: Option<&str>, len: usize) -> (u16, Value) {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    );
    let (response, _) = exchange(&server.addr(), head.as_bytes(), Duration::from_secs(5)).await;
    let status = response.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body_of(&response))
}

/// The JSON body of a raw HTTP response.
fn body_of(response: &str) -> Value {
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    serde_json::from_str(body).unwrap_or(Value::Null)
}

async fn bodies_are_refused_before_they_are_read(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let addr = server.addr();
    // A declared length over the limit is answered at once, without sending the body: 20 of
    // them at once (each 45 MB) cost the server nothing.
    let mut refusals = Vec::new();
    for _ in 0..20 {
        let addr = addr.clone();
        refusals.push(tokio::spawn(async move {
            let head = "POST /_matrix/client/v3/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                        Content-Length: 47185920\r\n\r\n";
            exchange(&addr, head.as_bytes(), Duration::from_secs(5)).await
        }));
    }
    for r in refusals {
        let (response, _) = r.await.unwrap();
        assert!(response.starts_with("HTTP/1.1 413"), "{response}");
        assert_eq!(body_of(&response)["errcode"], "M_TOO_LARGE", "{response}");
    }
    // Bodies without a declared length (chunked) are cut off at the limit: an unauthenticated
    // login gets 64 KiB, not the 45 MB sent.
    let mut streams = Vec::new();
    for _ in 0..20 {
        let addr = addr.clone();
        streams.push(tokio::spawn(async move {
            let head = "POST /_matrix/client/v3/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
            chunked(&addr, head, 1 << 20, 45).await
        }));
    }
    for s in streams {
        let response = s.await.unwrap();
        assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    }
    let resident = server.resident_bytes();
    assert!(resident < 200 << 20, "the server holds {} MiB after refusing large bodies", resident >> 20);

    // Authenticated JSON: `max_request_bytes` (10 MiB by default).
    let room = alice.create_room(json!({})).await;
    let token = alice.token.as_deref();
    let send = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/big");
    assert_error(&declared(&server, "PUT", &send, token, 11 << 20).await, 413, "M_TOO_LARGE");
    // Unauthenticated JSON: 64 KiB.
    assert_error(&declared(&server, "POST", "/_matrix/client/v3/login", None, 100_000).await, 413, "M_TOO_LARGE");
    // Nothing was kept of the refused message, and the server still serves.
    alice.send_text(&room, "encore là").await;
}

async fn uploads_go_to_disk_and_are_bounded(backend: Backend) {
    let server = TestServer::start(
        backend,
        &[("MEDIA__MAX_UPLOAD_BYTES", "20000000"), ("MEDIA__MAX_CONCURRENT_UPLOADS_PER_USER", "2")],
    )
    .await;
    let alice = server.register("alice").await;
    let token = alice.token.clone().unwrap();
    let addr = server.addr();
    // Over the limit from its declared length: refused at once.
    let head = format!(
        "POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 20000001\r\n\r\n"
    );
    let (response, _) = exchange(&addr, head.as_bytes(), Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");

    // Two uploads in progress for Alice (slow clients holding them open): a third is told to
    // come back later, with Retry-After.
    let start_upload = |len: usize| {
        let (addr, token) = (addr.clone(), token.clone());
        async move {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            let head = format!(
                "POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
            );
            s.write_all(head.as_bytes()).await.unwrap();
            s.write_all(&vec![7u8; 1000]).await.unwrap();
            s
        }
    };
    let mut first = start_upload(15_000_000).await;
    let _second = start_upload(15_000_000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = alice
        .http
        .post(format!("{}/_matrix/media/v3/upload", alice.base))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body("petit")
        .send()
        .await
        .unwrap();
    assert_eq!(third.status().as_u16(), 429);
    assert!(third.headers().get("retry-after").is_some(), "{:?}", third.headers());
    assert_eq!(third.json::<Value>().await.unwrap()["errcode"], "M_LIMIT_EXCEEDED");
    // The first one finishes: its place is free again, and its file is whole.
    let rest = vec![7u8; 15_000_000 - 1000];
    first.write_all(&rest).await.unwrap();
    let (response, _) = read_until_closed(&mut first, Duration::from_secs(10)).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let uri = body_of(&response)["content_uri"].as_str().unwrap().to_owned();
    let media = uri.trim_start_matches("mxc://");
    let downloaded = alice
        .http
        .get(format!("{}/_matrix/client/v1/media/download/{media}", alice.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(downloaded.len(), 15_000_000);
    assert!(downloaded.iter().all(|b| *b == 7));
    drop(_second);

    // Uploads too long for their declaration-free stream are cut off at the limit, and leave
    // no file behind.
    let head = format!(
        "POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    let response = chunked(&addr, &head, 1 << 20, 25).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tmp = server.data_dir.path().join("media").join("tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "temporary files left: {left:?}");

    // Many large uploads at once by several users: none is held in memory.
    let mut users = Vec::new();
    for i in 0..5 {
        users.push(server.register(&format!("u{i}")).await);
    }
    let mut uploads = Vec::new();
    for user in &users {
        for _ in 0..2 {
            let user = user.clone();
            uploads.push(tokio::spawn(async move {
                user.http
                    .post(format!("{}/_matrix/media/v3/upload", user.base))
                    .bearer_auth(user.token.clone().unwrap())
                    .header("content-type", "application/octet-stream")
                    .body(vec![3u8; 19_000_000])
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }));
        }
    }
    for u in uploads {
        assert_eq!(u.await.unwrap(), 200);
    }
    let resident = server.resident_bytes();
    assert!(resident < 150 << 20, "{} MiB resident after 190 MB of uploads", resident >> 20);
}

async fn slow_and_idle_connections_are_closed(backend: Backend) {
    let server = TestServer::start(
        backend,
        &[
            ("HTTP__HEADER_TIMEOUT_MS", "1000"),
            ("HTTP__BODY_TIMEOUT_MS", "2000"),
            ("HTTP__BODY_IDLE_TIMEOUT_MS", "1000"),
        ],
    )
    .await;
    let addr = server.addr();
    let started = Instant::now();
    // A connection that never says anything.
    let (_, closed) = exchange(&addr, b"", Duration::from_secs(5)).await;
    assert!(closed, "an idle connection stays open");
    // An unfinished request line, and unfinished headers.
    let (_, closed) = exchange(&addr, b"GET /_matrix/cli", Duration::from_secs(5)).await;
    assert!(closed, "an unfinished request line stays open");
    let (_, closed) =
        exchange(&addr, b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n", Duration::from_secs(5)).await;
    assert!(closed, "unfinished headers stay open");
    // A body that stops half-way: answered, and the connection closed.
    let head = "POST /_matrix/client/v3/login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"type\":";
    let (response, closed) = exchange(&addr, head.as_bytes(), Duration::from_secs(6)).await;
    assert!(closed, "an unfinished body stays open: {response}");
    assert!(response.is_empty() || response.starts_with("HTTP/1.1 4"), "{response}");
    // A kept-alive connection, idle after its first request.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let (response, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(closed, "an idle kept-alive connection stays open");
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// Raises this process's soft limit of open files (the test opens thousands of connections).
fn raise_file_limit() {
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

async fn idle_connections_from_one_address_leave_others_served(backend: Backend) {
    raise_file_limit();
    let server =
        TestServer::start(backend, &[("HTTP__MAX_CONNECTIONS_PER_IP", "100"), ("HTTP__CONNECTION_LIMIT_EXEMPT", "[]")])
            .await;
    let addr = server.addr();
    // 3,000 idle connections from 127.0.0.1.
    let mut idle = Vec::new();
    for _ in 0..3000 {
        match TcpStream::connect(&addr).await {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connect: {e}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Past the first 100, the server closed them at once.
    let mut closed = 0;
    for s in idle.iter_mut().skip(100) {
        let mut buf = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(20), s.read(&mut buf)).await {
            closed += 1;
        }
    }
    assert!(closed >= 2800, "only {closed} of the 2,900 connections over the cap were closed");
    // Another address is served as usual: registration, a room, a message, a sync.
    let other =
        reqwest::Client::builder().local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap()).build().unwrap();
    let started = Instant::now();
    let mut c = server.client();
    c.http = other;
    let body = json!({ "username": "bob", "password": "correct horse", "auth": { "type": "m.login.dummy" } });
    let (status, reg) = c.post("/_matrix/client/v3/register", &body).await;
    assert_eq!(status, 200, "{reg}");
    c.token = Some(reg["access_token"].as_str().unwrap().to_owned());
    let room = c.create_room(json!({})).await;
    c.send_text(&room, "servi").await;
    c.sync(None, "timeout=0").await;
    let took = started.elapsed();
    println!("served beside 3,000 idle connections: register, create, send, sync in {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    drop(idle);
}

/// A TCP listener that counts the connections it is offered, standing for an internal service.
async fn canary() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(s);
        }
    });
    (port, count)
}

async fn federation_never_reaches_internal_addresses(backend: Backend) {
    // Federation on, the default ranges: nothing internal is reachable.
    let server = TestServer::start(backend, &[("FEDERATION__ENABLED", "true")]).await;
    let alice = server.register("alice").await;
    let (port, offered) = canary().await;
    let target = format!("127.0.0.1:{port}");
    let signed = |origin: &str| {
        format!("X-Matrix origin=\"{origin}\",destination=\"localhost\",key=\"ed25519:a\",sig=\"c2lnbmF0dXJl\"")
    };
    let anon = server.client();
    for origin in [target.as_str(), "not a server name!", "[::1]:1"] {
        let r = anon
            .http
            .get(format!("{}/_matrix/federation/v1/query/profile?user_id=%40alice%3Alocalhost", anon.base))
            .header("authorization", signed(origin))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        // An origin that is no server name is a malformed request (400, as Synapse answers);
        // a server name that resolves inside is refused as unauthenticated (401).
        let expected =
            if origin == "not a server name!" { (400, Some("M_INVALID_PARAM")) } else { (401, Some("M_UNAUTHORIZED")) };
        assert_eq!((status, v["errcode"].as_str()), expected, "origin {origin}: {v}");
    }
    // A signed request's body is not even read before its origin checks out.
    let head = format!(
        "PUT /_matrix/federation/v1/send/t1 HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 5000000\r\n\r\n",
        signed(&target)
    );
    let (response, _) = exchange(&server.addr(), head.as_bytes(), Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    // What clients name: a directory, a profile, a join.
    let r = alice.get(&format!("/_matrix/client/v3/publicRooms?server={}", urlencode(&target))).await;
    assert!(r.0 >= 400, "{r:?}");
    let r = alice.get(&format!("/_matrix/client/v3/profile/{}", urlencode(&format!("@bob:{target}")))).await;
    assert!(r.0 >= 400, "{r:?}");
    let r = alice.join(&format!("#salon:{target}")).await;
    assert!(r.0 >= 400, "{r:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(offered.load(std::sync::atomic::Ordering::SeqCst), 0, "the server connected to an internal address");

    // Allowed explicitly (a private deployment, these tests), the same address is reached.
    let allowing = TestServer::start(
        backend,
        &[("FEDERATION__ENABLED", "true"), ("FEDERATION__IP_RANGE_ALLOWLIST", r#"["127.0.0.1/32"]"#)],
    )
    .await;
    let bob = allowing.register("bob").await;
    let r = bob.get(&format!("/_matrix/client/v3/publicRooms?server={}", urlencode(&target))).await;
    assert!(r.0 >= 400, "{r:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(offered.load(std::sync::atomic::Ordering::SeqCst) > 0, "the allow-list is not applied");
}

async fn import(root: &Client, body: Vec<u8>, csv: bool) -> (u16, Value) {
    try_import(root, body, csv).await.unwrap()
}

async fn try_import(root: &Client, body: Vec<u8>, csv: bool) -> reqwest::Result<(u16, Value)> {
    let resp = root
        .http
        .post(format!("{}/_diplomatie/admin/v1/import", root.base))
        .bearer_auth(root.token.clone().unwrap())
        .header("content-type", if csv { "text/csv" } else { "application/yaml" })
        .body(body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json::<Value>().await.unwrap_or(Value::Null)))
}

async fn nobody_raises_their_own_clearance(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let root = server.admin().await;
    let org = "users:\n  - { localpart: chef, password: pw-chef, group: dgm }\n  - { localpart: agent, password: pw-agent, group: dgm }\n\
               groups:\n  - { slug: dgm, name: DGM, managers: [chef] }\n";
    let (status, report) = import(&root, org.as_bytes().to_vec(), false).await;
    assert_eq!(status, 200, "{report}");
    let chef = server.login("chef", "pw-chef").await;
    let agent = server.login("agent", "pw-agent").await;
    let clearance = |c: &Client| format!("/_diplomatie/admin/v1/users/{}/clearance", urlencode(&c.user_id));
    let device = |c: &Client| {
        format!("/_diplomatie/admin/v1/users/{}/devices/{}/clearance", urlencode(&c.user_id), urlencode(&c.device_id))
    };
    // The manager of his own primary group cannot clear himself, nor can an administrator.
    let r = chef.put(&clearance(&chef), &json!({ "clearance": "DR" })).await;
    assert_error(&r, 403, "M_FORBIDDEN");
    assert!(r.1["error"].as_str().unwrap().contains("own"), "{}", r.1);
    assert_error(&root.put(&clearance(&root), &json!({ "clearance": "DR" })).await, 403, "M_FORBIDDEN");
    // He may clear the others of his group, and an administrator may clear him.
    assert_eq!(chef.put(&clearance(&agent), &json!({ "clearance": "DR" })).await.0, 200);
    assert_eq!(root.put(&clearance(&chef), &json!({ "clearance": "DR" })).await.0, 200);
    // Cleared, he still cannot approve his own device; he may approve another's, and the
    // administrator his.
    assert_error(&chef.put(&device(&chef), &json!({ "dr": true })).await, 403, "M_FORBIDDEN");
    assert_eq!(chef.put(&device(&agent), &json!({ "dr": true })).await.0, 200);
    assert_eq!(root.put(&device(&chef), &json!({ "dr": true })).await.0, 200);
    // Lowering one's own is allowed: withdrawing one's device.
    assert_eq!(chef.put(&device(&chef), &json!({ "dr": false })).await.0, 200);
    // Every change is recorded with who made it.
    let report = root.ok(Method::GET, &clearance(&chef), None).await;
    assert_eq!(report["clearance"], "DR");
    assert_eq!(report["set_by"], root.user_id.as_str(), "{report}");
    let report = root.ok(Method::GET, &clearance(&agent), None).await;
    assert_eq!(report["set_by"], chef.user_id.as_str(), "{report}");
}

async fn hostile_organisation_files_are_refused(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let root = server.admin().await;
    // An alias bomb: 9 levels of 9 aliases each, a billion strings once expanded.
    let mut bomb = String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for (prev, next) in ["a", "b", "c", "d", "e", "f", "g", "h"].iter().zip(["b", "c", "d", "e", "f", "g", "h", "i"]) {
        let refs = vec![format!("*{prev}"); 9].join(",");
        bomb.push_str(&format!("{next}: &{next} [{refs}]\n"));
    }
    bomb.push_str("users: *i\n");
    let started = Instant::now();
    let r = import(&root, bomb.into_bytes(), false).await;
    assert_error(&r, 400, "M_BAD_JSON");
    assert!(r.1["error"].as_str().unwrap().contains("alias") || r.1["error"].as_str().unwrap().contains("anchor"));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(server.resident_bytes() < 200 << 20);
    // A NUL in a value (escaped in YAML, or raw), nesting without end, a CSV line without end.
    assert_error(&import(&root, b"users:\n  - localpart: \"trunc\\0ated\"\n".to_vec(), false).await, 400, "M_BAD_JSON");
    assert_error(&import(&root, b"users:\n  - localpart: a\0b\n".to_vec(), false).await, 400, "M_BAD_JSON");
    let deep = format!("users: {}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert_error(&import(&root, deep.into_bytes(), false).await, 400, "M_BAD_JSON");
    let long = format!("localpart,name\nx,{}\n", "n".repeat(100_000));
    assert_error(&import(&root, long.into_bytes(), true).await, 400, "M_BAD_JSON");
    // Nothing of it was created.
    let ghost = root.get("/_diplomatie/admin/v1/users/%40trunc%3Alocalhost/clearance").await;
    assert_error(&ghost, 404, "M_NOT_FOUND");
    // A large file is read (3.3 MiB, over axum's default of 2 MiB) and refused for its content:
    // a JSON error about the file, not a plain-text 413.
    let mut csv = String::from("localpart,name,clearance,kind,group,admin\n");
    for i in 0..60_000 {
        csv.push_str(&format!("agent{i:05},Agent numero {i:05} de la direction,NP,agent,,\n"));
    }
    csv.push_str("dernier,Dernier,TS,agent,,\n");
    assert!(csv.len() > 3_300_000);
    let r = import(&root, csv.clone().into_bytes(), true).await;
    assert_error(&r, 400, "M_INVALID_PARAM");
    // Only an administrator may send that much: anyone else is refused before the body is read
    // (413 `M_TOO_LARGE`; the client, still writing the body when the server closes the
    // connection, may lose that answer in the race and see the connection cut instead).
    let alice = server.register("alice").await;
    match try_import(&alice, csv.into_bytes(), true).await {
        Ok(r) => assert_error(&r, 413, "M_TOO_LARGE"),
        Err(e) => assert!(format!("{e:?}").contains("BodyWrite"), "{e:?}"),
    }
    // Nothing of it was imported, and the server answers on.
    let ghost = root.get("/_diplomatie/admin/v1/users/%40agent00000%3Alocalhost/clearance").await;
    assert_error(&ghost, 404, "M_NOT_FOUND");
}

async fn login_without_a_type_is_a_client_error(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    server.register("alice").await;
    let c = server.client();
    for body in [json!({}), json!({ "identifier": { "type": "m.id.user", "user": "alice" }, "password": "x" })] {
        let r = c.post("/_matrix/client/v3/login", &body).await;
        assert_error(&r, 400, "M_MISSING_PARAM");
    }
    for body in [json!({ "type": 5 }), json!({ "type": null }), json!({ "type": ["m.login.password"] })] {
        let r = c.post("/_matrix/client/v3/login", &body).await;
        assert_eq!(r.0, 400, "{body}: {r:?}");
    }
    // The server is well, and logs no backtrace.
    let body = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "correct horse" });
    assert_eq!(c.post("/_matrix/client/v3/login", &body).await.0, 200);
}

async fn nul_characters_are_refused_alike(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let me = urlencode(&alice.user_id);
    let nul = "a\u{0}b";
    let refused = |r: (u16, Value), what: &str| {
        assert_eq!(r.0, 400, "{what}: {r:?}");
        let code = r.1["errcode"].as_str().unwrap_or_default().to_owned();
        assert!(code == "M_BAD_JSON" || code == "M_INVALID_PARAM", "{what}: {r:?}");
    };
    refused(
        alice.put(&format!("/_matrix/client/v3/profile/{me}/displayname"), &json!({ "displayname": nul })).await,
        "display name",
    );
    refused(
        alice.put(&format!("/_matrix/client/v3/devices/{}", alice.device_id), &json!({ "display_name": nul })).await,
        "device name",
    );
    refused(alice.get("/_matrix/client/v3/devices/AB%00CD").await, "device id");
    refused(
        alice.put(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/a%00b"), &json!({ "topic": "t" })).await,
        "state key",
    );
    refused(
        alice
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t%00x"),
                &json!({ "msgtype": "m.text", "body": "x" }),
            )
            .await,
        "transaction id",
    );
    refused(
        alice
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t1"),
                &json!({ "msgtype": "m.text", "body": nul }),
            )
            .await,
        "message body",
    );
    refused(
        alice.post("/_matrix/client/v3/user_directory/search", &json!({ "search_term": nul })).await,
        "directory search",
    );
    refused(
        alice
            .post(
                "/_matrix/client/v3/pushers/set",
                &json!({ "pushkey": nul, "kind": "http", "app_id": "a", "app_display_name": "a", "device_display_name": "d", "lang": "fr", "data": { "url": "https://push.example/_matrix/push/v1/notify" } }),
            )
            .await,
        "pusher",
    );
    refused(alice.get("/_matrix/client/v1/media/download/localhost/ab%00cd").await, "media id");
    refused(alice.put("/_diplomatie/client/v1/journal/tags/a%00b", &json!({})).await, "journal tag");
    refused(
        alice
            .post(
                "/_diplomatie/client/v1/communities",
                &json!({ "slug": "s", "name": nul, "manager": "alice", "project": "p" }),
            )
            .await,
        "community",
    );
    refused(
        alice
            .post(
                "/_diplomatie/client/v1/correspondence",
                &json!({ "kind": "telegram", "from": "dgm", "subject": nul, "body": "b", "to": [] }),
            )
            .await,
        "correspondence",
    );
    // Numbers that canonical JSON cannot hold (push rules could not be evaluated on them).
    for n in ["9007199254740993", "18446744073709551615", "1.5"] {
        let body: Value = serde_json::from_str(&format!(r#"{{"msgtype":"m.text","body":"n","n":{n}}}"#)).unwrap();
        let r = alice.put(&format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/n{}", n.len()), &body).await;
        assert_error(&r, 400, "M_BAD_JSON");
    }
    // Nothing of it was kept: the display name is unchanged, and the server serves.
    let profile = alice.ok(Method::GET, &format!("/_matrix/client/v3/profile/{me}"), None).await;
    assert_eq!(profile["displayname"], "alice");
    alice.send_text(&room, "intact").await;
}

async fn user_directory_terms_are_literal_and_bounded(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let me = urlencode(&bob.user_id);
    bob.ok(
        Method::PUT,
        &format!("/_matrix/client/v3/profile/{me}/displayname"),
        Some(&json!({ "displayname": "Bob 100%" })),
    )
    .await;
    let search = |term: String| {
        let alice = alice.clone();
        async move { alice.post("/_matrix/client/v3/user_directory/search", &json!({ "search_term": term })).await }
    };
    // `%` and `_` are themselves, not wildcards.
    let (status, v) = search("%".into()).await;
    assert_eq!(status, 200, "{v}");
    let found: Vec<&str> = v["results"].as_array().unwrap().iter().map(|u| u["user_id"].as_str().unwrap()).collect();
    assert_eq!(found, vec![bob.user_id.as_str()], "only Bob's name has a %");
    let (_, v) = search("_".into()).await;
    assert_eq!(v["results"], json!([]));
    // A term of 100,000 characters is no error; it matches nobody.
    let (status, v) = search("a".repeat(100_000)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["results"], json!([]));
}

async fn search_counts_only_what_the_user_may_read(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "initial_state": [{ "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "joined" } }] }))
        .await;
    assert_eq!(bob.join(&room).await.0, 200);
    alice.send_text(&room, "ananas avant").await;
    assert_eq!(bob.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), &json!({})).await.0, 200);
    for i in 0..3 {
        alice.send_text(&room, &format!("ananas après {i}")).await;
    }
    let query = json!({ "search_categories": { "room_events": { "search_term": "ananas" } } });
    // The index catches up in the background.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = alice.ok(Method::POST, "/_matrix/client/v3/search", Some(&query)).await;
        if all["search_categories"]["room_events"]["count"] == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "{all}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let found = bob.ok(Method::POST, "/_matrix/client/v3/search", Some(&query)).await;
    let events = &found["search_categories"]["room_events"];
    assert_eq!(events["results"].as_array().unwrap().len(), 1, "{found}");
    assert_eq!(events["count"], 1, "the count tells what Bob cannot read: {found}");
}

async fn every_error_is_a_matrix_error(backend: Backend) {
    let server = TestServer::start(
        backend,
        &[
            ("RATE_LIMITS__ENABLED", "true"),
            ("RATE_LIMITS__LOGIN_PER_SECOND", "0.1"),
            ("RATE_LIMITS__LOGIN_BURST", "2"),
            ("REGISTRATION__SHARED_SECRET", "s3cret"),
        ],
    )
    .await;
    let alice = server.register("alice").await;
    // Over 2 MiB to the portal's and the profile's endpoints: the limits of the configuration
    // apply (10 MiB), answered in JSON either way.
    let big = json!({ "slug": "s", "name": "n", "manager": "alice", "project": "p", "padding": "p".repeat(3 << 20) });
    let r = alice.post("/_diplomatie/client/v1/communities", &big).await;
    assert!(r.0 != 413 && r.1["errcode"].is_string(), "{}", r.0);
    let me = urlencode(&alice.user_id);
    let r = alice
        .put(&format!("/_matrix/client/v3/profile/{me}/displayname"), &json!({ "displayname": "d".repeat(3 << 20) }))
        .await;
    assert!(r.1["errcode"].is_string(), "{}", r.0);
    let path = format!("/_matrix/client/v3/profile/{me}/displayname");
    assert_error(&declared(&server, "PUT", &path, alice.token.as_deref(), 11 << 20).await, 413, "M_TOO_LARGE");
    assert_error(&declared(&server, "POST", "/_synapse/admin/v1/register", None, 100_000).await, 413, "M_TOO_LARGE");
    // Invalid UTF-8 in a path.
    let r = alice.put("/_diplomatie/admin/v1/users/%FF%FE/kind", &json!({ "kind": "agent" })).await;
    assert_error(&r, 400, "M_INVALID_PARAM");
    // A rate-limited login says when to come back, in the header as in the body.
    let c = server.client();
    let body = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "wrong" });
    let mut limited = None;
    for _ in 0..10 {
        let r = c.http.post(format!("{}/_matrix/client/v3/login", c.base)).json(&body).send().await.unwrap();
        if r.status().as_u16() == 429 {
            limited = Some(r);
            break;
        }
    }
    let limited = limited.expect("the login rate limit applies");
    let retry: u64 = limited.headers().get("retry-after").expect("Retry-After").to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    let v: Value = limited.json().await.unwrap();
    assert_eq!(v["errcode"], "M_LIMIT_EXCEEDED");
    assert!(v["retry_after_ms"].as_u64().is_some(), "{v}");
}
