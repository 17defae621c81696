//! Calls: delayed events (MSC4140), with which MatrixRTC clients leave a call they lost; TURN
//! credentials (`/voip/turnServer`) and the built-in relay, with a WebRTC call (the `webrtc`
//! crate, relay-only) whose traffic crosses it; and what the relay refuses.

use std::{sync::Arc, time::Duration};

use diplomatie_tests::{assert_error, backend_tests, urlencode, Backend, Client, TestServer};
use reqwest::Method;
use serde_json::{json, Value};
use webrtc::{
    api::APIBuilder,
    data_channel::data_channel_message::DataChannelMessage,
    ice_transport::{ice_candidate_type::RTCIceCandidateType, ice_server::RTCIceServer},
    peer_connection::{
        configuration::RTCConfiguration, policy::ice_transport_policy::RTCIceTransportPolicy, RTCPeerConnection,
    },
    turn::client::{Client as TurnClient, ClientConfig},
    util::Conn,
};

backend_tests!(
    delayed_events_are_sent_restarted_and_cancelled,
    delayed_events_fire_after_a_restart,
    delayed_events_refuse_what_the_msc_refuses,
);

const UNSTABLE: &str = "/_matrix/client/unstable/org.matrix.msc4140";

async fn schedule(c: &Client, room: &str, kind: &str, txn: &str, body: Value) -> (u16, Value) {
    c.put(&format!("{UNSTABLE}/rooms/{room}/delayed_event/{kind}/{txn}"), &body).await
}

async fn delay_id(c: &Client, room: &str, kind: &str, txn: &str, body: Value) -> String {
    let (status, v) = schedule(c, room, kind, txn, body).await;
    assert_eq!(status, 200, "{v}");
    v["delay_id"].as_str().unwrap().to_owned()
}

/// The delayed event once finalised (waits up to `within`).
async fn finalised(c: &Client, id: &str, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let v = c.ok(Method::GET, &format!("{UNSTABLE}/delayed_events/{id}"), None).await;
        if v.get("finalised_ts").is_some() {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{id} not finalised in {within:?}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn delayed_events_are_sent_restarted_and_cancelled(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;

    // /versions says so.
    let versions = server.client().ok(Method::GET, "/_matrix/client/versions", None).await;
    assert_eq!(versions["unstable_features"]["org.matrix.msc4140"], true);

    // The MSC's endpoint, idempotent per transaction.
    let body = json!({ "delay": 1500, "content": { "msgtype": "m.text", "body": "I left" } });
    let fired = delay_id(&alice, &room, "m.room.message", "t1", body.clone()).await;
    assert_eq!(delay_id(&alice, &room, "m.room.message", "t1", body).await, fired);
    let scheduled_at = std::time::Instant::now();
    // Its first form (matrix-js-sdk's): a query parameter on /send and /state.
    let (status, v) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t2?org.matrix.msc4140.delay=60000"),
            &json!({ "msgtype": "m.text", "body": "never" }),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let cancelled = v["delay_id"].as_str().unwrap().to_owned();
    assert!(v.get("event_id").is_none());
    let member_key = format!("_{}_{}", alice.user_id, alice.device_id);
    let (status, v) = alice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{room}/state/org.matrix.msc3401.call.member/{}?org.matrix.msc4140.delay=60000",
                urlencode(&member_key)
            ),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let hangup = v["delay_id"].as_str().unwrap().to_owned();
    let restarted = delay_id(
        &alice,
        &room,
        "m.room.topic",
        "t3",
        json!({ "delay": 2500, "state_key": "", "content": { "topic": "late" } }),
    )
    .await;

    let list = alice.ok(Method::GET, &format!("{UNSTABLE}/delayed_events?status=scheduled"), None).await;
    let ids: Vec<&str> =
        list["delayed_events"].as_array().unwrap().iter().map(|d| d["delay_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 4, "{list}");
    assert_eq!(ids[0], fired, "ordered by send time");
    let one = alice.ok(Method::GET, &format!("{UNSTABLE}/delayed_events/{hangup}"), None).await;
    assert_eq!(one["type"], "org.matrix.msc3401.call.member");
    assert_eq!(one["state_key"], member_key);
    assert_eq!(one["delay"], 60000);
    assert!(one.get("event_id").is_none() && one.get("finalised_ts").is_none());
    // Nobody else reads them.
    let bob = server.register("bob").await;
    assert_error(&bob.get(&format!("{UNSTABLE}/delayed_events/{hangup}")).await, 404, "M_NOT_FOUND");
    assert_eq!(bob.ok(Method::GET, &format!("{UNSTABLE}/delayed_events"), None).await["delayed_events"], json!([]));

    // Management without a token: the delay_id is the capability (an SFU holds it).
    let anonymous = server.client();
    let manage = |id: &str, action: &str| format!("{UNSTABLE}/delayed_events/{id}/{action}");
    assert_eq!(anonymous.post(&manage(&cancelled, "cancel"), &json!({})).await.0, 200);
    assert_eq!(anonymous.post(&manage(&cancelled, "cancel"), &json!({})).await.0, 200, "a retried cancel");
    assert_error(&anonymous.post(&manage(&cancelled, "send"), &json!({})).await, 409, "M_UNKNOWN");
    assert_error(&anonymous.post(&manage("nosuchid", "restart"), &json!({})).await, 404, "M_NOT_FOUND");
    assert_error(&anonymous.post(&manage(&hangup, "explode"), &json!({})).await, 400, "M_INVALID_PARAM");

    // The heartbeat: restarted before it fires, it moves its send time.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = alice.ok(Method::GET, &format!("{UNSTABLE}/delayed_events/{restarted}"), None).await;
    assert_eq!(anonymous.post(&manage(&restarted, "restart"), &json!({})).await.0, 200);
    let after = alice.ok(Method::GET, &format!("{UNSTABLE}/delayed_events/{restarted}"), None).await;
    assert!(after["running_since"].as_u64() > before["running_since"].as_u64(), "{before} {after}");

    // The first fires on its own, never before its time, as Alice.
    let done = finalised(&alice, &fired, Duration::from_secs(20)).await;
    assert!(scheduled_at.elapsed() >= Duration::from_millis(1500));
    let event_id = done["event_id"].as_str().expect("sent").to_owned();
    let event =
        alice.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/event/{}", urlencode(&event_id)), None).await;
    assert_eq!(event["sender"], alice.user_id);
    assert_eq!(event["content"]["body"], "I left");

    // "send" sends at once, through the state endpoint's rules.
    assert_eq!(anonymous.post(&manage(&hangup, "send"), &json!({})).await.0, 200);
    let state = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{room}/state/org.matrix.msc3401.call.member/{}", urlencode(&member_key)),
            None,
        )
        .await;
    assert_eq!(state, json!({}));
    assert_eq!(anonymous.post(&manage(&hangup, "send"), &json!({})).await.0, 200, "a retried send");
    assert_error(&anonymous.post(&manage(&hangup, "cancel"), &json!({})).await, 409, "M_UNKNOWN");

    // The restarted one fires later, and the topic is set.
    let done = finalised(&alice, &restarted, Duration::from_secs(20)).await;
    assert!(done["event_id"].is_string(), "{done}");
    let topic = alice.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"), None).await;
    assert_eq!(topic["topic"], "late");

    // Outcomes stay readable.
    let list = alice.ok(Method::GET, &format!("{UNSTABLE}/delayed_events?status=finalised"), None).await;
    assert_eq!(list["delayed_events"].as_array().unwrap().len(), 4, "{list}");
    assert_eq!(
        alice.ok(Method::GET, &format!("{UNSTABLE}/delayed_events?status=scheduled"), None).await["delayed_events"],
        json!([])
    );
}

async fn delayed_events_fire_after_a_restart(backend: Backend) {
    let mut server = TestServer::start(backend, &[]).await;
    let mut alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let due_while_down = delay_id(
        &alice,
        &room,
        "m.room.message",
        "d1",
        json!({ "delay": 1000, "content": { "msgtype": "m.text", "body": "while down" } }),
    )
    .await;
    let due_later = delay_id(
        &alice,
        &room,
        "m.room.message",
        "d2",
        json!({ "delay": 9000, "content": { "msgtype": "m.text", "body": "later" } }),
    )
    .await;
    let scheduled_at = std::time::Instant::now();

    // Killed, not stopped: nothing is written on the way out.
    server.kill().await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    server.launch().await;
    alice.base = server.base.clone();

    // What fell due while the server was down is sent as it starts.
    let done = finalised(&alice, &due_while_down, Duration::from_secs(10)).await;
    assert!(done["event_id"].is_string(), "{done}");
    // What is due later is still scheduled, then sent on time.
    let later = alice.ok(Method::GET, &format!("{UNSTABLE}/delayed_events/{due_later}"), None).await;
    if scheduled_at.elapsed() < Duration::from_millis(8500) {
        assert!(later.get("finalised_ts").is_none(), "sent early: {later}");
    }
    let done = finalised(&alice, &due_later, Duration::from_secs(30)).await;
    assert!(scheduled_at.elapsed() >= Duration::from_millis(9000));
    assert!(done["event_id"].is_string(), "{done}");
    // Each was sent once.
    let messages =
        alice.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), None).await;
    let bodies: Vec<&str> =
        messages["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, ["later", "while down"]);
}

async fn delayed_events_refuse_what_the_msc_refuses(backend: Backend) {
    let server = TestServer::start(
        backend,
        &[("DELAYED_EVENTS__MAX_DELAY_MS", "600000"), ("DELAYED_EVENTS__MAX_SCHEDULED_PER_USER", "3")],
    )
    .await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let text = json!({ "msgtype": "m.text", "body": "x" });

    let too_long = schedule(&alice, &room, "m.room.message", "a", json!({ "delay": 600001, "content": text })).await;
    assert_error(&too_long, 400, "M_MAX_DELAY_EXCEEDED");
    assert_eq!(too_long.1["max_delay"], 600000);
    assert_error(
        &schedule(&alice, &room, "m.room.message", "b", json!({ "delay": 0, "content": text })).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &schedule(&alice, &room, "m.room.message", "c", json!({ "content": text })).await,
        400,
        "M_MISSING_PARAM",
    );
    // Not in the room: refused at once.
    assert_error(
        &schedule(&bob, &room, "m.room.message", "d", json!({ "delay": 1000, "content": text })).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &schedule(&alice, &room, "m.room.create", "e", json!({ "delay": 1000, "state_key": "", "content": {} })).await,
        403,
        "M_FORBIDDEN",
    );

    // Power levels are those of the moment it is sent: Bob may not set the topic, and the
    // failure is its outcome.
    assert_eq!(bob.join(&room).await.0, 200);
    let denied = delay_id(
        &bob,
        &room,
        "m.room.topic",
        "f",
        json!({ "delay": 500, "state_key": "", "content": { "topic": "mine" } }),
    )
    .await;
    let done = finalised(&bob, &denied, Duration::from_secs(20)).await;
    assert!(done.get("event_id").is_none(), "{done}");
    assert_eq!(done["error"]["errcode"], "M_FORBIDDEN", "{done}");
    // "send" of a scheduled event that cannot be sent answers the error, and it stays scheduled.
    let refused = delay_id(
        &bob,
        &room,
        "m.room.topic",
        "g",
        json!({ "delay": 60000, "state_key": "", "content": { "topic": "mine" } }),
    )
    .await;
    let manage = format!("{UNSTABLE}/delayed_events/{refused}/send");
    assert_error(&server.client().post(&manage, &json!({})).await, 403, "M_FORBIDDEN");
    let still = bob.ok(Method::GET, &format!("{UNSTABLE}/delayed_events/{refused}"), None).await;
    assert!(still.get("finalised_ts").is_none(), "{still}");

    // At most three scheduled at once: the fourth waits for the next send time.
    for txn in ["h", "i"] {
        delay_id(&alice, &room, "m.room.message", txn, json!({ "delay": 30000, "content": text })).await;
    }
    delay_id(&alice, &room, "m.room.message", "j", json!({ "delay": 30000, "content": text })).await;
    let (status, v) = schedule(&alice, &room, "m.room.message", "k", json!({ "delay": 1000, "content": text })).await;
    assert_eq!((status, v["errcode"].as_str()), (429, Some("M_LIMIT_EXCEEDED")), "{v}");
    // A filter the MSC does not know is refused.
    assert_error(&alice.get(&format!("{UNSTABLE}/delayed_events?status=lost")).await, 400, "M_INVALID_PARAM");
}

fn free_udp_port() -> u16 {
    // The relay listens on this port over UDP and TCP: one free on both (a TCP port the
    // system left to a client connection meanwhile would refuse the relay).
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A server with its TURN relay on loopback; `lab` lets it relay to loopback (peers on this
/// machine), as a deployment on an internal network would list its own range.
async fn server_with_relay(lab: bool, max_per_user: &str) -> (TestServer, u16) {
    let port = free_udp_port();
    let listen = format!("127.0.0.1:{port}");
    let allowed = if lab { r#"["127.0.0.0/8"]"# } else { "[]" };
    let server = TestServer::start(
        Backend::Sqlite,
        &[
            ("VOIP__TURN__ENABLED", "true"),
            ("VOIP__TURN__LISTEN", &listen),
            ("VOIP__TURN__ALLOWED_PEERS", allowed),
            ("VOIP__TURN__MAX_ALLOCATIONS_PER_USER", max_per_user),
            ("VOIP__RTC_FOCI", r#"[{ type = "livekit", livekit_service_url = "https://sfu.example.org" }]"#),
        ],
    )
    .await;
    (server, port)
}

async fn turn_credentials(c: &Client) -> (String, String, Vec<String>) {
    let v = c.ok(Method::GET, "/_matrix/client/v3/voip/turnServer", None).await;
    let uris = v["uris"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_owned()).collect();
    (v["username"].as_str().unwrap().to_owned(), v["password"].as_str().unwrap().to_owned(), uris)
}

async fn peer(api: &webrtc::api::API, username: &str, password: &str, uris: &[String]) -> Arc<RTCPeerConnection> {
    let config = RTCConfiguration {
        ice_servers: vec![RTCIceServer {
            urls: uris.to_vec(),
            username: username.to_owned(),
            credential: password.to_owned(),
        }],
        ice_transport_policy: RTCIceTransportPolicy::Relay,
        ..Default::default()
    };
    Arc::new(api.new_peer_connection(config).await.expect("peer connection"))
}

/// The description of `pc` once its candidates (relayed ones only) are gathered.
async fn gathered(pc: &RTCPeerConnection) -> webrtc::peer_connection::sdp::session_description::RTCSessionDescription {
    let mut done = pc.gathering_complete_promise().await;
    let _ = done.recv().await;
    pc.local_description().await.expect("local description")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webrtc_call_crosses_the_built_in_relay() {
    let (server, port) = server_with_relay(true, "10").await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;

    // What clients discover: the relay's credentials, and the SFU of the deployment.
    let (a_user, a_pass, uris) = turn_credentials(&alice).await;
    assert_eq!(uris, [format!("turn:127.0.0.1:{port}?transport=udp"), format!("turn:127.0.0.1:{port}?transport=tcp")]);
    let expiry: u64 = a_user.split_once(':').unwrap().0.parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(expiry > now + 3500 && expiry <= now + 3601, "an hour: {a_user}");
    assert!(a_user.ends_with(":@alice:localhost"));
    let v = alice.ok(Method::GET, "/_matrix/client/v3/voip/turnServer", None).await;
    assert_eq!(v["ttl"], 3600);
    let well_known = server.client().ok(Method::GET, "/.well-known/matrix/client", None).await;
    assert_eq!(
        well_known["org.matrix.msc4143.rtc_foci"],
        json!([{ "type": "livekit", "livekit_service_url": "https://sfu.example.org" }])
    );
    let transports = alice.ok(Method::GET, "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports", None).await;
    assert_eq!(transports["rtc_transports"][0]["type"], "livekit");
    let (b_user, b_pass, _) = turn_credentials(&bob).await;

    // Two peers that may only use relayed candidates: if anything flows, it flows through the
    // relay.
    let mut media = webrtc::api::media_engine::MediaEngine::default();
    media.register_default_codecs().unwrap();
    let api = APIBuilder::new().with_media_engine(media).build();
    let caller = peer(&api, &a_user, &a_pass, &uris).await;
    let callee = peer(&api, &b_user, &b_pass, &uris).await;

    let (received_tx, mut received_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    callee.on_data_channel(Box::new(move |channel| {
        let received = received_tx.clone();
        Box::pin(async move {
            channel.on_message(Box::new(move |msg: DataChannelMessage| {
                let _ = received.send(msg.data.to_vec());
                Box::pin(async {})
            }));
        })
    }));
    let channel = caller.create_data_channel("call", None).await.unwrap();
    let (open_tx, mut open_rx) = tokio::sync::mpsc::channel::<()>(1);
    channel.on_open(Box::new(move || {
        Box::pin(async move {
            let _ = open_tx.send(()).await;
        })
    }));

    let offer = caller.create_offer(None).await.unwrap();
    caller.set_local_description(offer).await.unwrap();
    let offer = gathered(&caller).await;
    assert!(offer.sdp.contains("typ relay"), "a relayed candidate: {}", offer.sdp);
    assert!(!offer.sdp.contains("typ host"), "relay only: {}", offer.sdp);
    callee.set_remote_description(offer).await.unwrap();
    let answer = callee.create_answer(None).await.unwrap();
    callee.set_local_description(answer).await.unwrap();
    let answer = gathered(&callee).await;
    caller.set_remote_description(answer).await.unwrap();

    tokio::time::timeout(Duration::from_secs(30), open_rx.recv()).await.expect("the call connects").unwrap();
    let frames: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 1000]).collect();
    for frame in &frames {
        channel.send(&bytes::Bytes::from(frame.clone())).await.unwrap();
    }
    for frame in &frames {
        let got = tokio::time::timeout(Duration::from_secs(10), received_rx.recv()).await.expect("data").unwrap();
        assert_eq!(&got, frame);
    }
    let pair = caller.sctp().transport().ice_transport().get_selected_candidate_pair().await.expect("a selected pair");
    assert_eq!(pair.local.typ, RTCIceCandidateType::Relay);
    assert_eq!(pair.remote.typ, RTCIceCandidateType::Relay);
    // Relayed addresses are the relay's: its public address, a port of its range.
    assert_eq!(pair.local.address, "127.0.0.1");
    assert!(pair.local.port >= 49152, "{}", pair.local.port);
    caller.close().await.unwrap();
    callee.close().await.unwrap();
}

/// A TURN client of the relay at `port` with these credentials, over `conn`.
async fn turn_client_on(conn: Arc<dyn Conn + Send + Sync>, port: u16, username: &str, password: &str) -> TurnClient {
    let client = TurnClient::new(ClientConfig {
        stun_serv_addr: String::new(),
        turn_serv_addr: format!("127.0.0.1:{port}"),
        username: username.to_owned(),
        password: password.to_owned(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    client
}

/// A TURN client of the relay at `port` over UDP.
async fn turn_client(port: u16, username: &str, password: &str) -> TurnClient {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    turn_client_on(Arc::new(socket), port, username, password).await
}

/// A TURN client of the relay at `port` over TCP (RFC 8656 §3.1: the relay's own framing).
async fn turn_client_over_tcp(port: u16, username: &str, password: &str) -> TurnClient {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let frames = diplomatie_turn::tcp::Frames::new(stream).unwrap();
    turn_client_on(Arc::new(frames), port, username, password).await
}

/// Whether `data` sent through a relayed address reaches a peer on loopback.
async fn reaches_loopback_peer(relay: &impl Conn) -> bool {
    let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = peer.local_addr().unwrap();
    let _ = relay.send_to(b"hello through the relay", target).await;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(2), peer.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => &buf[..n] == b"hello through the relay",
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_refuses_forged_and_expired_credentials_forbidden_peers_and_excess() {
    // Loopback allowed: the relay works with good credentials (the control).
    let (server, port) = server_with_relay(true, "1").await;
    let alice = server.register("alice").await;
    let (user, pass, _) = turn_credentials(&alice).await;
    let client = turn_client(port, &user, &pass).await;
    let relay = client.allocate().await.expect("allocation with the server's credentials");
    assert!(reaches_loopback_peer(&relay).await, "relayed to an allowed peer");

    // A second allocation of the same user passes the quota of one.
    let again = turn_client(port, &user, &pass).await;
    assert!(again.allocate().await.is_err(), "quota of one allocation per user");
    // Another user has their own.
    let bob = server.register("bob").await;
    let (b_user, b_pass, _) = turn_credentials(&bob).await;
    assert!(turn_client(port, &b_user, &b_pass).await.allocate().await.is_ok());

    // Forged: a password not made with the shared secret.
    let forged = turn_client(port, &user, "bm90IHRoZSBzZWNyZXQ=").await;
    assert!(forged.allocate().await.is_err(), "forged password refused");
    // Expired: made with the real secret (read from the data directory), but in the past.
    let secret = std::fs::read_to_string(server.data_dir.path().join("turn_secret")).unwrap();
    let past = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 10;
    let expired_user = format!("{past}:@carol:localhost");
    let expired_pass = {
        use base64::Engine as _;
        use hmac::Mac as _;
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.trim().as_bytes()).unwrap();
        mac.update(expired_user.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    };
    let fresh_user = format!("{}:@carol:localhost", past + 3600);
    let fresh_pass = {
        use base64::Engine as _;
        use hmac::Mac as _;
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.trim().as_bytes()).unwrap();
        mac.update(fresh_user.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    };
    assert!(turn_client(port, &expired_user, &expired_pass).await.allocate().await.is_err(), "expired refused");
    assert!(turn_client(port, &fresh_user, &fresh_pass).await.allocate().await.is_ok(), "the same secret, in time");
    client.close().await.unwrap();

    // Over TCP, on the same port, for networks that let no UDP out: the same credentials, the
    // same quota, the same peers.
    let (_, _, uris) = turn_credentials(&bob).await;
    assert!(uris.contains(&format!("turn:127.0.0.1:{port}?transport=tcp")), "{uris:?}");
    let dave = server.register("dave").await;
    let (c_user, c_pass, _) = turn_credentials(&dave).await;
    let over_tcp = turn_client_over_tcp(port, &c_user, &c_pass).await;
    let relay = over_tcp.allocate().await.expect("allocation over TCP");
    assert!(reaches_loopback_peer(&relay).await, "relayed from a TCP client");
    let second = turn_client_over_tcp(port, &c_user, &c_pass).await;
    assert!(second.allocate().await.is_err(), "the quota counts TCP allocations too");
    assert!(turn_client_over_tcp(port, &c_user, "bm90IHRoZSBzZWNyZXQ=").await.allocate().await.is_err());
    over_tcp.close().await.unwrap();

    // Loopback not allowed (the default): the allocation works, relaying to it does not.
    let (strict, strict_port) = server_with_relay(false, "10").await;
    let alice = strict.register("alice").await;
    let (user, pass, _) = turn_credentials(&alice).await;
    let client = turn_client(strict_port, &user, &pass).await;
    let relay = client.allocate().await.expect("allocation");
    assert!(!reaches_loopback_peer(&relay).await, "relayed to a forbidden peer");

    // Without the relay, no credentials: Synapse's empty answer.
    let plain = TestServer::start(Backend::Sqlite, &[]).await;
    let carol = plain.register("carol").await;
    assert_eq!(carol.ok(Method::GET, "/_matrix/client/v3/voip/turnServer", None).await, json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_calls_and_set_only_their_own_membership() {
    let server = TestServer::start(Backend::Sqlite, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&room).await.0, 200);
    let levels =
        alice.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/"), None).await;
    assert_eq!(levels["events"]["org.matrix.msc3401.call.member"], 0);
    assert_eq!(levels["events"]["m.rtc.member"], 0);
    let path =
        |key: &str| format!("/_matrix/client/v3/rooms/{room}/state/org.matrix.msc3401.call.member/{}", urlencode(key));
    let membership = json!({ "application": "m.call", "call_id": "", "device_id": bob.device_id, "focus_active": { "type": "livekit" } });
    // Bob, at power 0, joins the call under his own key.
    let own = format!("_{}_{}_m.call", bob.user_id, bob.device_id);
    let (status, v) = bob.put(&path(&own), &membership).await;
    assert_eq!(status, 200, "{v}");
    // He may not write Alice's.
    let hers = format!("_{}_DEVICE_m.call", alice.user_id);
    assert_error(&bob.put(&path(&hers), &json!({})).await, 403, "M_FORBIDDEN");
    assert_error(&bob.put(&path(&alice.user_id), &json!({})).await, 403, "M_FORBIDDEN");
    // The room's administrator may clear his when he is gone.
    let (status, v) = alice.put(&path(&own), &json!({})).await;
    assert_eq!(status, 200, "{v}");
}
