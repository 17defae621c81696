//! Application services (application-service spec): a registration file read at start-up, the
//! service's token acting as its users, its namespaces reserved, the events it is interested in
//! pushed to it in transactions that survive a restart, and the questions the server asks it.
//! The service here is an HTTP server in the test, answering as a bridge would.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::{get, post, put},
    Json, Router,
};
use diplomatie_tests::{assert_error, backend_tests, urlencode, Backend, Client, TestServer};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::mpsc;

backend_tests!(
    an_application_service_bridges_users_rooms_and_aliases,
    transactions_wait_for_the_service_across_a_restart
);

const AS_TOKEN: &str = "as-token/for+the=bridge&`{^|}";
const HS_TOKEN: &str = "hs-token-for-the-server";

/// What the service in the test saw and how it answers.
struct Bridge {
    /// Each transaction: (id, events).
    transactions: mpsc::UnboundedSender<(String, Vec<Value>)>,
    /// The status transactions are answered with.
    status: Mutex<StatusCode>,
    /// The server, for the service's own calls (it creates users and aliases when asked).
    server: Mutex<Option<(String, String)>>,
    /// The paths of the questions the server asked.
    asked: Mutex<Vec<String>>,
}

type B = State<Arc<Bridge>>;

fn authorised(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {HS_TOKEN}"))
}

async fn transaction(State(b): B, Path(txn): Path<String>, headers: HeaderMap, Json(body): Json<Value>) -> StatusCode {
    if !authorised(&headers) {
        return StatusCode::FORBIDDEN;
    }
    let status = *b.status.lock().unwrap();
    if status.is_success() {
        let events = body["events"].as_array().cloned().unwrap_or_default();
        let _ = b.transactions.send((txn, events));
    }
    status
}

/// The service's own call to the server, with its token.
async fn as_call(b: &Bridge, method: Method, path: &str, body: Value) -> (u16, Value) {
    let (base, _) = b.server.lock().unwrap().clone().expect("the server is known");
    let r =
        reqwest::Client::new().request(method, format!("{base}{path}")).bearer_auth(AS_TOKEN).json(&body).send().await;
    let r = r.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// `GET /users/{userId}`: the bridge creates the users of its namespace it is asked about.
async fn query_user(State(b): B, Path(user): Path<String>, headers: HeaderMap) -> (StatusCode, Json<Value>) {
    b.asked.lock().unwrap().push(format!("users/{user}"));
    if !authorised(&headers) || !user.starts_with("@bridge_") {
        return (StatusCode::NOT_FOUND, Json(json!({ "errcode": "M_NOT_FOUND" })));
    }
    let localpart = user.trim_start_matches('@').split(':').next().unwrap().to_owned();
    let body = json!({ "type": "m.login.application_service", "username": localpart, "inhibit_login": true });
    let (status, _) = as_call(&b, Method::POST, "/_matrix/client/v3/register", body).await;
    assert_eq!(status, 200);
    (StatusCode::OK, Json(json!({})))
}

/// `GET /rooms/{alias}`: the bridge makes a room for the aliases of its namespace.
async fn query_alias(State(b): B, Path(alias): Path<String>, headers: HeaderMap) -> (StatusCode, Json<Value>) {
    b.asked.lock().unwrap().push(format!("rooms/{alias}"));
    if !authorised(&headers) || !alias.starts_with("#bridge_") {
        return (StatusCode::NOT_FOUND, Json(json!({ "errcode": "M_NOT_FOUND" })));
    }
    let (status, room) = as_call(&b, Method::POST, "/_matrix/client/v3/createRoom", json!({})).await;
    assert_eq!(status, 200, "{room}");
    let path = format!("/_matrix/client/v3/directory/room/{}", urlencode(&alias));
    let (status, body) = as_call(&b, Method::PUT, &path, json!({ "room_id": room["room_id"] })).await;
    assert_eq!(status, 200, "{body}");
    (StatusCode::OK, Json(json!({})))
}

async fn ping(headers: HeaderMap, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    if !authorised(&headers) || body["transaction_id"] != "ping-1" {
        return (StatusCode::FORBIDDEN, Json(json!({ "errcode": "M_FORBIDDEN" })));
    }
    (StatusCode::OK, Json(json!({})))
}

async fn protocol(Path(name): Path<String>) -> (StatusCode, Json<Value>) {
    if name != "email" {
        return (StatusCode::NOT_FOUND, Json(json!({ "errcode": "M_NOT_FOUND" })));
    }
    let info = json!({
        "user_fields": ["address"], "location_fields": ["address"], "icon": "mxc://example.org/icon",
        "field_types": {}, "instances": [{ "desc": "Mail", "network_id": "smtp", "fields": {} }]
    });
    (StatusCode::OK, Json(info))
}

async fn third_party_user(axum::extract::Query(q): axum::extract::Query<Vec<(String, String)>>) -> Json<Value> {
    let address = q.iter().find(|(k, _)| k == "address").map(|(_, v)| v.clone()).unwrap_or_default();
    Json(json!([{ "protocol": "email", "fields": { "address": address }, "userid": "@bridge_mail:localhost" }]))
}

/// Starts the bridge on a loopback port; answers its URL.
async fn start_bridge(bridge: Arc<Bridge>) -> String {
    let app = Router::new()
        .route("/_matrix/app/v1/transactions/{txn}", put(transaction))
        .route("/_matrix/app/v1/users/{user}", get(query_user))
        .route("/_matrix/app/v1/rooms/{alias}", get(query_alias))
        .route("/_matrix/app/v1/ping", post(ping))
        .route("/_matrix/app/v1/thirdparty/protocol/{name}", get(protocol))
        .route("/_matrix/app/v1/thirdparty/user/email", get(third_party_user))
        .with_state(bridge);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn new_bridge() -> (Arc<Bridge>, mpsc::UnboundedReceiver<(String, Vec<Value>)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let bridge = Bridge {
        transactions: tx,
        status: Mutex::new(StatusCode::OK),
        server: Mutex::new(None),
        asked: Mutex::new(Vec::new()),
    };
    (Arc::new(bridge), rx)
}

/// The registration file (YAML, as Synapse reads it) and the server that loads it.
async fn start_server(backend: Backend, bridge: &Arc<Bridge>, url: &str) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bridge.yaml");
    let registration = format!(
        "id: mailbridge\nurl: {url}\nas_token: '{AS_TOKEN}'\nhs_token: {HS_TOKEN}\nsender_localpart: mailbot\n\
         rate_limited: false\nprotocols: [email]\nnamespaces:\n  users:\n    - regex: '@bridge_.*:localhost'\n      exclusive: true\n\
         \x20 aliases:\n    - regex: '#bridge_.*:localhost'\n      exclusive: true\n  rooms: []\n"
    );
    std::fs::write(&file, registration).unwrap();
    let files = format!("[\"{}\"]", file.display());
    let server = TestServer::start(backend, &[("APP_SERVICE_CONFIG_FILES", &files)]).await;
    *bridge.server.lock().unwrap() = Some((server.base.clone(), server.server_name.clone()));
    (server, dir)
}

/// The bridge's client: its token, acting as `user` (its own user when `None`).
fn as_client(server: &TestServer) -> Client {
    let mut c = server.client();
    c.token = Some(AS_TOKEN.to_owned());
    c
}

/// Waits for the next transaction holding an event that `check` accepts; answers that event.
async fn next_event(
    rx: &mut mpsc::UnboundedReceiver<(String, Vec<Value>)>,
    check: impl Fn(&Value) -> bool,
) -> (String, Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (txn, events) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("a transaction in time")
            .expect("the bridge runs");
        assert!(txn.parse::<u64>().is_ok(), "transaction ids are numbers: {txn}");
        if let Some(event) = events.into_iter().find(|e| check(e)) {
            return (txn, event);
        }
    }
}

async fn an_application_service_bridges_users_rooms_and_aliases(backend: Backend) {
    let (bridge, mut rx) = new_bridge();
    let url = start_bridge(bridge.clone()).await;
    let (server, _dir) = start_server(backend, &bridge, &url).await;
    let asc = as_client(&server);

    // The service's own user exists, without registering; its token may come in the query
    // (deprecated, but what older bridges send), percent-encoded.
    let (status, me) = asc.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!((status, me["user_id"].as_str()), (200, Some("@mailbot:localhost")), "{me}");
    let in_query = format!("/_matrix/client/v3/account/whoami?access_token={}", urlencode(AS_TOKEN));
    let (status, me) = server.client().get(&in_query).await;
    assert_eq!((status, me["user_id"].as_str()), (200, Some("@mailbot:localhost")), "{me}");

    // Registration: of its namespace, with its token only; nobody else there.
    let reg = |name: &str| json!({ "type": "m.login.application_service", "username": name });
    let (status, alice) = asc.post("/_matrix/client/v3/register", &reg("bridge_alice")).await;
    assert_eq!(status, 200, "{alice}");
    assert!(alice["access_token"].is_string() && alice["device_id"].is_string(), "{alice}");
    assert_error(&asc.post("/_matrix/client/v3/register", &reg("carol")).await, 400, "M_EXCLUSIVE");
    assert_error(&server.client().post("/_matrix/client/v3/register", &reg("bridge_x")).await, 401, "M_MISSING_TOKEN");
    let body = json!({ "username": "bridge_bob", "password": "correct horse", "auth": { "type": "m.login.dummy" } });
    assert_error(&server.client().post("/_matrix/client/v3/register", &body).await, 400, "M_EXCLUSIVE");
    assert_error(
        &server.client().get("/_matrix/client/v3/register/available?username=bridge_bob").await,
        400,
        "M_EXCLUSIVE",
    );

    // Logging in as one of its users, with its token.
    let login = |user: &str| json!({ "type": "m.login.application_service", "identifier": { "type": "m.id.user", "user": user } });
    let (status, session) = asc.post("/_matrix/client/v3/login", &login("bridge_alice")).await;
    assert_eq!((status, session["user_id"].as_str()), (200, Some("@bridge_alice:localhost")), "{session}");
    assert_error(&asc.post("/_matrix/client/v3/login", &login("bridge_unknown")).await, 403, "M_FORBIDDEN");
    assert_error(
        &server.client().post("/_matrix/client/v3/login", &login("bridge_alice")).await,
        401,
        "M_MISSING_TOKEN",
    );

    // Acting as its users: only those of its namespace, and only once registered.
    let who = |user: &str| format!("/_matrix/client/v3/account/whoami?user_id={}", urlencode(user));
    let (status, me) = asc.get(&who("@bridge_alice:localhost")).await;
    assert_eq!((status, me["user_id"].as_str()), (200, Some("@bridge_alice:localhost")), "{me}");
    let human = server.register("human").await;
    assert_error(&asc.get(&who("@human:localhost")).await, 403, "M_FORBIDDEN");
    assert_error(&asc.get(&who("@bridge_nobody:localhost")).await, 403, "M_FORBIDDEN");
    assert_error(&asc.get(&who("not a user")).await, 400, "M_INVALID_PARAM");
    // A user's own token does not act as another user.
    let (_, me) = human.get(&who("@bridge_alice:localhost")).await;
    assert_eq!(me["user_id"], "@human:localhost");

    // A room with a user of the namespace: its events reach the bridge, with the server's token.
    let room = human.create_room(json!({ "preset": "public_chat" })).await;
    let (status, body) = human.invite(&room, "@bridge_alice:localhost").await;
    assert_eq!(status, 200, "{body}");
    let (_, invite) =
        next_event(&mut rx, |e| e["type"] == "m.room.member" && e["state_key"] == "@bridge_alice:localhost").await;
    assert_eq!(invite["content"]["membership"], "invite");
    assert_eq!(invite["room_id"], room.as_str());
    let join = format!("/_matrix/client/v3/rooms/{room}/join?user_id={}", urlencode("@bridge_alice:localhost"));
    let (status, body) = asc.post(&join, &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let send = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t1?user_id=%40bridge_alice%3Alocalhost");
    let (status, body) = asc.put(&send, &json!({ "msgtype": "m.text", "body": "from the mail" })).await;
    assert_eq!(status, 200, "{body}");
    let sync = human.sync(None, "").await;
    let timeline = sync["rooms"]["join"][&room]["timeline"]["events"].as_array().cloned().unwrap_or_default();
    assert!(
        timeline.iter().any(|e| e["sender"] == "@bridge_alice:localhost" && e["content"]["body"] == "from the mail"),
        "{timeline:?}"
    );
    human.send_text(&room, "to the mail").await;
    let (_, message) = next_event(&mut rx, |e| e["content"]["body"] == "to the mail").await;
    assert_eq!(
        (message["sender"].as_str(), message["room_id"].as_str()),
        (Some("@human:localhost"), Some(room.as_str()))
    );

    // A room without any of its users or aliases is none of its business.
    let other = human.create_room(json!({})).await;
    human.send_text(&other, "private").await;
    human.send_text(&room, "after the private one").await;
    let (_, next) = next_event(&mut rx, |e| e["type"] == "m.room.message").await;
    assert_eq!(next["content"]["body"], "after the private one", "{next}");

    // An unknown user of its namespace: the server asks the bridge, which creates it.
    let (status, body) = human.invite(&room, "@bridge_carol:localhost").await;
    assert_eq!(status, 200, "{body}");
    assert_error(&human.invite(&room, "@nobody:localhost").await, 404, "M_NOT_FOUND");
    assert!(bridge.asked.lock().unwrap().contains(&"users/@bridge_carol:localhost".to_owned()));

    // An unknown alias of its namespace: asked too, and then found; its namespace is reserved.
    let (status, body) =
        human.get(&format!("/_matrix/client/v3/directory/room/{}", urlencode("#bridge_news:localhost"))).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["room_id"].as_str().is_some_and(|r| r.starts_with('!')), "{body}");
    let alias_path = format!("/_matrix/client/v3/directory/room/{}", urlencode("#bridge_mine:localhost"));
    assert_error(&human.put(&alias_path, &json!({ "room_id": room })).await, 400, "M_EXCLUSIVE");
    let outside = format!("/_matrix/client/v3/directory/room/{}", urlencode("#elsewhere:localhost"));
    assert_error(&asc.put(&outside, &json!({ "room_id": room })).await, 400, "M_EXCLUSIVE");
    let (status, body) = asc.put(&alias_path, &json!({ "room_id": room })).await;
    assert_eq!(status, 200, "{body}");

    // Ping: the service's own id only.
    let (status, body) =
        asc.post("/_matrix/client/v1/appservice/mailbridge/ping", &json!({ "transaction_id": "ping-1" })).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["duration_ms"].is_u64(), "{body}");
    let (status, body) =
        asc.post("/_matrix/client/v1/appservice/mailbridge/ping", &json!({ "transaction_id": "x" })).await;
    assert_eq!((status, body["errcode"].as_str()), (502, Some("M_BAD_STATUS")), "{body}");
    assert_eq!(body["status"], 403, "{body}");
    assert_error(&asc.post("/_matrix/client/v1/appservice/other/ping", &json!({})).await, 403, "M_FORBIDDEN");
    assert_error(&human.post("/_matrix/client/v1/appservice/mailbridge/ping", &json!({})).await, 403, "M_FORBIDDEN");

    // Third-party networks: what the bridge says, with instance ids.
    let (status, protocols) = human.get("/_matrix/client/v3/thirdparty/protocols").await;
    assert_eq!(status, 200, "{protocols}");
    assert_eq!(protocols["email"]["instances"][0]["instance_id"], "mailbridge|smtp", "{protocols}");
    assert_error(&human.get("/_matrix/client/v3/thirdparty/protocol/irc").await, 404, "M_NOT_FOUND");
    let (status, users) = human.get("/_matrix/client/v3/thirdparty/user/email?address=a%40example.org").await;
    assert_eq!(status, 200, "{users}");
    assert_eq!(users[0]["fields"]["address"], "a@example.org", "{users}");
    // Bad input: no token, a missing parameter, an unknown kind of lookup.
    assert_error(&server.client().get("/_matrix/client/v3/thirdparty/protocols").await, 401, "M_MISSING_TOKEN");
    assert_error(&human.get("/_matrix/client/v3/thirdparty/location").await, 400, "M_MISSING_PARAM");
    assert_error(&human.get("/_matrix/client/v3/thirdparty/nothing/email").await, 404, "M_UNRECOGNIZED");

    // Its own lists of the room directory, apart from the server's.
    let list = format!("/_matrix/client/v3/directory/list/appservice/smtp/{room}");
    assert_error(&human.put(&list, &json!({ "visibility": "public" })).await, 403, "M_FORBIDDEN");
    let (status, body) = asc.put(&list, &json!({ "visibility": "public" })).await;
    assert_eq!(status, 200, "{body}");
    let (h, r) = (&human, room.as_str());
    let listed = |body: Value| async move {
        let (status, page) = h.post("/_matrix/client/v3/publicRooms", &body).await;
        assert_eq!(status, 200, "{page}");
        page["chunk"].as_array().unwrap().iter().any(|x| x["room_id"] == r)
    };
    assert!(!listed(json!({})).await);
    assert!(listed(json!({ "third_party_instance_id": "mailbridge|smtp" })).await);
    assert!(listed(json!({ "include_all_networks": true })).await);
    assert!(!listed(json!({ "third_party_instance_id": "mailbridge|other" })).await);
    let (status, _) = asc.delete(&list).await;
    assert_eq!(status, 200);
    let unknown = "/_matrix/client/v3/directory/list/appservice/smtp/!nowhere:localhost";
    assert_error(&asc.put(unknown, &json!({ "visibility": "public" })).await, 404, "M_NOT_FOUND");
    let malformed = "/_matrix/client/v3/directory/list/appservice/smtp/not-a-room";
    assert_error(&asc.delete(malformed).await, 400, "M_INVALID_PARAM");
    assert!(!listed(json!({ "third_party_instance_id": "mailbridge|smtp" })).await);

    // Deactivating one of its users needs no password.
    let deactivate = format!("/_matrix/client/v3/account/deactivate?user_id={}", urlencode("@bridge_carol:localhost"));
    let (status, body) = asc.post(&deactivate, &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_error(&asc.get(&who("@bridge_carol:localhost")).await, 403, "M_FORBIDDEN");
}

async fn transactions_wait_for_the_service_across_a_restart(backend: Backend) {
    let (bridge, mut rx) = new_bridge();
    let url = start_bridge(bridge.clone()).await;
    let (mut server, _dir) = start_server(backend, &bridge, &url).await;
    let asc = as_client(&server);
    let (status, body) = asc
        .post(
            "/_matrix/client/v3/register",
            &json!({ "type": "m.login.application_service", "username": "bridge_dan" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let human = server.register("human").await;
    let room = human.create_room(json!({ "invite": ["@bridge_dan:localhost"] })).await;
    next_event(&mut rx, |e| e["state_key"] == "@bridge_dan:localhost").await;
    let join = format!("/_matrix/client/v3/join/{room}?user_id={}", urlencode("@bridge_dan:localhost"));
    let (status, body) = asc.post(&join, &json!({})).await;
    assert_eq!(status, 200, "{body}");
    next_event(&mut rx, |e| e["state_key"] == "@bridge_dan:localhost" && e["content"]["membership"] == "join").await;

    // The bridge fails: the message waits, and the server is restarted meanwhile.
    *bridge.status.lock().unwrap() = StatusCode::SERVICE_UNAVAILABLE;
    human.send_text(&room, "while the bridge was down").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill().await;
    server.launch().await;
    *bridge.server.lock().unwrap() = Some((server.base.clone(), server.server_name.clone()));
    *bridge.status.lock().unwrap() = StatusCode::OK;
    let (txn, event) = next_event(&mut rx, |e| e["content"]["body"] == "while the bridge was down").await;
    assert_eq!(event["room_id"], room.as_str());

    // Acknowledged once: the next transaction carries what follows only.
    let human = server.login("human", "correct horse").await;
    human.send_text(&room, "after the restart").await;
    let (next_txn, _) = next_event(&mut rx, |e| e["content"]["body"] == "after the restart").await;
    assert!(next_txn.parse::<u64>().unwrap() > txn.parse::<u64>().unwrap());
    let mut rest = Vec::new();
    while let Ok((_, events)) = rx.try_recv() {
        rest.extend(events);
    }
    assert!(rest.iter().all(|e| e["content"]["body"] != "while the bridge was down"), "{rest:?}");
}
