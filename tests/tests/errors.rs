//! Bad input and durability: the spec's JSON errors with the right statuses, nothing panics, and
//! an acknowledged event survives the process being killed.

use diplomatie_tests::{assert_error, backend_tests, Backend, TestServer};
use reqwest::Method;
use serde_json::json;

backend_tests!(
    malformed_requests_get_spec_errors,
    unknown_endpoints_are_unrecognized,
    oversized_bodies_are_refused,
    rate_limits_answer_limit_exceeded,
    acknowledged_events_survive_a_kill,
    discovery_and_capabilities,
    the_example_configuration_starts_a_server,
);

async fn malformed_requests_get_spec_errors(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    // Not JSON at all.
    let r = alice.raw(Method::POST, "/_matrix/client/v3/createRoom", b"{not json".to_vec()).await;
    assert_error(&r, 400, "M_NOT_JSON");
    let r = alice
        .raw(Method::PUT, &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t1"), b"[1,2]".to_vec())
        .await;
    assert_error(&r, 400, "M_BAD_JSON");
    // Wrong types and missing fields.
    assert_error(
        &alice.post("/_matrix/client/v3/createRoom", &json!({ "invite": "not-a-list" })).await,
        400,
        "M_BAD_JSON",
    );
    assert_error(
        &alice.post("/_matrix/client/v3/login", &json!({ "type": "m.login.password" })).await,
        400,
        "M_MISSING_PARAM",
    );
    assert_error(&alice.post(&format!("/_matrix/client/v3/rooms/{room}/invite"), &json!({})).await, 400, "M_BAD_JSON");
    assert_error(
        &alice.post(&format!("/_matrix/client/v3/rooms/{room}/invite"), &json!({ "user_id": "not a user" })).await,
        400,
        "M_BAD_JSON",
    );
    // Bad identifiers in the path.
    assert_error(&alice.get("/_matrix/client/v3/rooms/not-a-room/state").await, 400, "M_INVALID_PARAM");
    // Tokens.
    let mut anon = alice.clone();
    anon.token = None;
    assert_error(&anon.get("/_matrix/client/v3/joined_rooms").await, 401, "M_MISSING_TOKEN");
    anon.token = Some("bogus".into());
    let r = anon.get("/_matrix/client/v3/joined_rooms").await;
    assert_error(&r, 401, "M_UNKNOWN_TOKEN");
    assert_ne!(r.1["soft_logout"], true);
    // The deprecated query parameter works too.
    let (status, _) = anon
        .http
        .get(format!("{}/_matrix/client/v3/joined_rooms?access_token={}", alice.base, alice.token.as_ref().unwrap()))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 200);
    // The server is still healthy after all that.
    alice.send_text(&room, "toujours là").await;
}

async fn unknown_endpoints_are_unrecognized(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let c = server.client();
    assert_error(&c.get("/_matrix/client/v3/not_an_endpoint").await, 404, "M_UNRECOGNIZED");
    // An unknown path under a known prefix.
    assert_error(&c.get("/_matrix/client/v3/thirdparty").await, 404, "M_UNRECOGNIZED");
    // A known path with the wrong method: 405, same errcode (spec, "Common error codes").
    assert_error(&c.request(Method::DELETE, "/_matrix/client/v3/login", None).await, 405, "M_UNRECOGNIZED");
    // CORS pre-flight for web clients.
    let r = c
        .http
        .request(Method::OPTIONS, format!("{}/_matrix/client/v3/login", c.base))
        .header("Origin", "https://app.element.io")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert!(r.headers().contains_key("access-control-allow-origin"));
}

async fn oversized_bodies_are_refused(backend: Backend) {
    let server = TestServer::start(backend, &[("MAX_REQUEST_BYTES", "10000")]).await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let big = json!({ "msgtype": "m.text", "body": "x".repeat(20_000) });
    assert_error(
        &alice.put(&format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/big"), &big).await,
        413,
        "M_TOO_LARGE",
    );
    // Events over the spec's 64 KiB limit are refused even when the body limit allows them.
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let huge = json!({ "msgtype": "m.text", "body": "x".repeat(70_000) });
    assert_error(
        &alice.put(&format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/huge"), &huge).await,
        413,
        "M_TOO_LARGE",
    );
    let msgs = alice.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1"), None).await;
    assert_ne!(msgs["chunk"][0]["type"], "m.room.message", "nothing was stored");
}

async fn rate_limits_answer_limit_exceeded(backend: Backend) {
    let server = TestServer::start(
        backend,
        &[("RATE_LIMITS__ENABLED", "true"), ("RATE_LIMITS__PER_SECOND", "1"), ("RATE_LIMITS__BURST", "3")],
    )
    .await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let mut limited = None;
    for i in 0..10 {
        let r = alice
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/rl{i}"),
                &json!({ "msgtype": "m.text", "body": "x" }),
            )
            .await;
        if r.0 == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("rate limit reached");
    assert_error(&r, 429, "M_LIMIT_EXCEEDED");
    assert!(r.1["retry_after_ms"].as_u64().unwrap() > 0);
}

async fn acknowledged_events_survive_a_kill(backend: Backend) {
    let mut server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({ "name": "Durable" })).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(alice.send_text(&room, &format!("d{i}")).await);
    }
    // SIGKILL right after the last 200: no shutdown, no flush.
    server.kill().await;
    server.launch().await;
    let mut alice = alice;
    alice.base = server.base.clone();
    let msgs = alice.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=20"), None).await;
    let got: Vec<&str> = msgs["chunk"].as_array().unwrap().iter().filter_map(|e| e["event_id"].as_str()).collect();
    for id in &ids {
        assert!(got.contains(&id.as_str()), "{id} survived");
    }
    // The stream resumes where it was: a new event syncs after the old ones.
    let s = alice.sync(None, "").await;
    let since = s["next_batch"].as_str().unwrap().to_owned();
    alice.send_text(&room, "après redémarrage").await;
    let s = alice.sync(Some(&since), "timeout=0").await;
    let events = s["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["content"]["body"], "après redémarrage");
    // Transaction ids survive as well.
    let r = alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/again"),
            Some(&json!({ "msgtype": "m.text", "body": "x" })),
        )
        .await;
    let r2 = alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/again"),
            Some(&json!({ "msgtype": "m.text", "body": "x" })),
        )
        .await;
    assert_eq!(r["event_id"], r2["event_id"]);
}

async fn discovery_and_capabilities(backend: Backend) {
    let server = TestServer::start(backend, &[("PUBLIC_BASEURL", "https://matrix.diplomatie.example/")]).await;
    let c = server.client();
    let v = c.ok(Method::GET, "/_matrix/client/versions", None).await;
    let versions: Vec<&str> = v["versions"].as_array().unwrap().iter().filter_map(|x| x.as_str()).collect();
    assert!(versions.contains(&"v1.1") && versions.contains(&"v1.19"), "{versions:?}");
    let wk = c.ok(Method::GET, "/.well-known/matrix/client", None).await;
    assert_eq!(wk["m.homeserver"]["base_url"], "https://matrix.diplomatie.example");
    let s = c.ok(Method::GET, "/.well-known/matrix/server", None).await;
    assert_eq!(s["m.server"], "localhost:443");
    assert_error(&c.get("/_matrix/client/v3/capabilities").await, 401, "M_MISSING_TOKEN");
    let alice = server.register("alice").await;
    let caps = alice.ok(Method::GET, "/_matrix/client/v3/capabilities", None).await;
    assert_eq!(caps["capabilities"]["m.change_password"]["enabled"], true);
}

async fn the_example_configuration_starts_a_server(backend: Backend) {
    // The documented example parses and runs (the harness overrides only paths and ports).
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/diplomatie.example.toml");
    let server = TestServer::start(backend, &[]).await;
    let out = server.command(&["--config", path, "registration-token", "create", "--token", "exemple"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "exemple");
}
