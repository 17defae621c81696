//! Events: send with transaction ids, redaction, `/messages`, `/context`, event lookup,
//! relations and threads, history visibility (client-server spec, "Events" and following).

use diplomatie_tests::{assert_error, backend_tests, urlencode, Backend, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

backend_tests!(
    sending_is_idempotent_per_transaction,
    redaction_strips_content_and_checks_power,
    messages_paginate_both_ways_with_filters,
    context_returns_events_around_one,
    relations_and_threads,
    history_visibility_bounds_what_users_read,
    timestamp_to_event_finds_the_closest_event,
);

fn bodies(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap_or("").to_owned())
        .collect()
}

async fn sending_is_idempotent_per_transaction(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/txn1");
    let first = alice.ok(Method::PUT, &path, Some(&json!({ "msgtype": "m.text", "body": "une fois" }))).await;
    let again = alice.ok(Method::PUT, &path, Some(&json!({ "msgtype": "m.text", "body": "une fois" }))).await;
    assert_eq!(first["event_id"], again["event_id"]);
    let msgs = alice.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"), None).await;
    assert_eq!(bodies(&msgs["chunk"]), vec!["une fois"]);
    // Another device may use the same transaction id for another event.
    let c = server.client();
    let (_, login) = c
        .post(
            "/_matrix/client/v3/login",
            &json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "correct horse" }),
        )
        .await;
    let mut other = alice.clone();
    other.token = Some(login["access_token"].as_str().unwrap().to_owned());
    let third = other.ok(Method::PUT, &path, Some(&json!({ "msgtype": "m.text", "body": "autre appareil" }))).await;
    assert_ne!(third["event_id"], first["event_id"]);
    // The sending device sees its transaction id on its event (to match its local echo), in
    // /sync, /messages and /event; the other device does not.
    let txn_of = |events: &Value, id: &Value| {
        events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event_id"] == *id)
            .map(|e| e["unsigned"]["transaction_id"].clone())
    };
    let synced = alice.sync(None, "").await;
    assert_eq!(txn_of(&synced["rooms"]["join"][&room]["timeline"]["events"], &first["event_id"]), Some(json!("txn1")));
    let msgs = alice.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"), None).await;
    assert_eq!(txn_of(&msgs["chunk"], &first["event_id"]), Some(json!("txn1")));
    assert_eq!(txn_of(&msgs["chunk"], &third["event_id"]), Some(Value::Null), "sent by the other device");
    let msgs = other.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"), None).await;
    assert_eq!(txn_of(&msgs["chunk"], &first["event_id"]), Some(Value::Null));
    assert_eq!(txn_of(&msgs["chunk"], &third["event_id"]), Some(json!("txn1")));
    let event_path = format!("/_matrix/client/v3/rooms/{room}/event/{}", first["event_id"].as_str().unwrap());
    assert_eq!(alice.ok(Method::GET, &event_path, None).await["unsigned"]["transaction_id"], "txn1");
    // Custom event types go through; state-only and unknown rooms do not.
    alice
        .ok(Method::PUT, &format!("/_matrix/client/v3/rooms/{room}/send/org.example.note/t2"), Some(&json!({ "x": 1 })))
        .await;
    assert_error(
        &alice.put("/_matrix/client/v3/rooms/!nope:localhost/send/m.room.message/t3", &json!({ "body": "x" })).await,
        404,
        "M_NOT_FOUND",
    );
    let bob = server.register("bob").await;
    assert_error(&bob.put(&path, &json!({ "msgtype": "m.text", "body": "intrus" })).await, 403, "M_FORBIDDEN");
}

async fn redaction_strips_content_and_checks_power(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat", "room_version": "11" })).await;
    bob.join(&room).await;
    let a_msg = alice.send_text(&room, "message d'Alice").await;
    let b_msg = bob.send_text(&room, "message de Bob").await;
    // Bob cannot redact Alice's message (redact power 50); he can redact his own.
    assert_error(
        &bob.put(&format!("/_matrix/client/v3/rooms/{room}/redact/{}/r1", urlencode(&a_msg)), &json!({})).await,
        403,
        "M_FORBIDDEN",
    );
    let r = bob
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{room}/redact/{}/r2", urlencode(&b_msg)),
            Some(&json!({ "reason": "erreur" })),
        )
        .await;
    assert!(r["event_id"].as_str().unwrap().starts_with('$'));
    // Moderators can redact anyone's.
    alice
        .ok(Method::PUT, &format!("/_matrix/client/v3/rooms/{room}/redact/{}/r3", urlencode(&a_msg)), Some(&json!({})))
        .await;
    for id in [&a_msg, &b_msg] {
        let ev = bob.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/event/{}", urlencode(id)), None).await;
        assert_eq!(ev["content"], json!({}));
        // It says which redaction redacted it (`unsigned.redacted_because`).
        let because = &ev["unsigned"]["redacted_because"];
        assert_eq!(because["type"], "m.room.redaction", "{ev}");
        assert_eq!(because["content"]["redacts"], id.as_str(), "{ev}");
    }
    // The redaction event itself carries `redacts` (in content since v11).
    let msgs = bob.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=3"), None).await;
    let redaction = msgs["chunk"].as_array().unwrap().iter().find(|e| e["type"] == "m.room.redaction").unwrap().clone();
    assert_eq!(redaction["content"]["redacts"], a_msg.as_str());
    assert_error(
        &alice.put(&format!("/_matrix/client/v3/rooms/{room}/redact/%24nope/r4"), &json!({})).await,
        404,
        "M_NOT_FOUND",
    );
    // An event of another room is not this room's to redact.
    let other = alice.create_room(json!({})).await;
    let elsewhere = format!("/_matrix/client/v3/rooms/{other}/redact/{}/r5", urlencode(&a_msg));
    assert_error(&alice.put(&elsewhere, &json!({})).await, 400, "M_INVALID_PARAM");
}

async fn messages_paginate_both_ways_with_filters(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    for i in 0..7 {
        let who = if i % 2 == 0 { &alice } else { &bob };
        who.send_text(&room, &format!("m{i}")).await;
    }
    // Backwards, three at a time, from the end.
    let p1 = alice.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=3"), None).await;
    assert_eq!(bodies(&p1["chunk"]), vec!["m6", "m5", "m4"]);
    let end = p1["end"].as_str().unwrap();
    let p2 = alice
        .ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=3&from={end}"), None)
        .await;
    assert_eq!(bodies(&p2["chunk"]), vec!["m3", "m2", "m1"]);
    // Forwards from that point returns what came after, in order.
    let forwards = |limit: usize, from: &Value| {
        let path =
            format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&limit={limit}&from={}", from.as_str().unwrap());
        let alice = &alice;
        async move { alice.ok(Method::GET, &path, None).await }
    };
    let f = forwards(2, &p2["end"]).await;
    assert_eq!(f["chunk"].as_array().unwrap().len(), 2);
    // Forwards to the newest event: an `end` to wait for more from, then an empty page without.
    let f = forwards(50, &f["end"]).await;
    assert_eq!(bodies(&f["chunk"]), vec!["m3", "m4", "m5", "m6"]);
    let f = forwards(50, &f["end"]).await;
    assert!(f["chunk"].as_array().unwrap().is_empty() && f.get("end").is_none(), "{f}");
    // Filter: only Bob's messages, with lazy-loaded members.
    let filter = urlencode(
        &json!({ "senders": ["@bob:localhost"], "types": ["m.room.message"], "lazy_load_members": true }).to_string(),
    );
    let only_bob = alice
        .ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=10&filter={filter}"), None)
        .await;
    assert_eq!(bodies(&only_bob["chunk"]), vec!["m5", "m3", "m1"]);
    let members: Vec<&str> =
        only_bob["state"].as_array().unwrap().iter().map(|e| e["state_key"].as_str().unwrap()).collect();
    assert!(members.contains(&"@bob:localhost"), "{members:?}");
    // The start of the room: a page with events has an `end` (as Synapse), the page after it
    // is empty and has none.
    let all = alice.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100"), None).await;
    assert_eq!(all["chunk"].as_array().unwrap().last().unwrap()["type"], "m.room.create");
    let end = all["end"].as_str().expect("an end after events");
    let past = alice
        .ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100&from={end}"), None)
        .await;
    assert!(past["chunk"].as_array().unwrap().is_empty() && past.get("end").is_none(), "{past}");
    // A first sync's whole timeline: its `prev_batch` pages back over it again (as Synapse).
    let wide = urlencode(&json!({ "room": { "timeline": { "limit": 50 } } }).to_string());
    let sync = alice.ok(Method::GET, &format!("/_matrix/client/v3/sync?filter={wide}"), None).await;
    assert_eq!(sync["rooms"]["join"][&room]["timeline"]["limited"], false);
    let prev = sync["rooms"]["join"][&room]["timeline"]["prev_batch"].as_str().unwrap();
    let again = alice
        .ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100&from={prev}"), None)
        .await;
    assert_eq!(again["chunk"].as_array().unwrap().last().unwrap()["type"], "m.room.create");
    assert!(again["end"].is_string(), "{again}");
    assert_error(
        &alice.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&from=garbage")).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &alice.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=sideways")).await,
        400,
        "M_INVALID_PARAM",
    );
}

async fn context_returns_events_around_one(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({ "name": "Contexte" })).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(alice.send_text(&room, &format!("c{i}")).await);
    }
    let ctx = alice
        .ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/context/{}?limit=4", urlencode(&ids[2])), None)
        .await;
    assert_eq!(ctx["event"]["content"]["body"], "c2");
    assert_eq!(bodies(&ctx["events_before"]), vec!["c1", "c0"]);
    assert_eq!(bodies(&ctx["events_after"]), vec!["c3", "c4"]);
    assert!(ctx["state"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.name"));
    assert!(ctx["start"].is_string() && ctx["end"].is_string());
    let after = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&from={}", ctx["end"].as_str().unwrap()),
            None,
        )
        .await;
    assert!(bodies(&after["chunk"]).is_empty());
    assert_error(&alice.get(&format!("/_matrix/client/v3/rooms/{room}/context/%24missing")).await, 404, "M_NOT_FOUND");
}

async fn relations_and_threads(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let root = alice.send_text(&room, "Télégramme 1234").await;
    let other_root = alice.send_text(&room, "Autre sujet").await;
    let send = |c: &diplomatie_tests::Client, kind: &str, txn: &str, content: Value| {
        let c = c.clone();
        let path = format!("/_matrix/client/v3/rooms/{room}/send/{kind}/{txn}");
        async move { c.ok(Method::PUT, &path, Some(&content)).await["event_id"].as_str().unwrap().to_owned() }
    };
    let reply = send(&bob, "m.room.message", "t1", json!({ "msgtype": "m.text", "body": "Pris en compte", "m.relates_to": { "rel_type": "m.thread", "event_id": root } })).await;
    send(
        &alice,
        "m.room.message",
        "t2",
        json!({ "msgtype": "m.text", "body": "Merci", "m.relates_to": { "rel_type": "m.thread", "event_id": root } }),
    )
    .await;
    send(
        &bob,
        "m.reaction",
        "t3",
        json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": root, "key": "👍" } }),
    )
    .await;
    send(&alice, "m.room.message", "t4", json!({ "msgtype": "m.text", "body": "* Télégramme 1235", "m.new_content": { "msgtype": "m.text", "body": "Télégramme 1235" }, "m.relates_to": { "rel_type": "m.replace", "event_id": root } })).await;
    let all =
        bob.ok(Method::GET, &format!("/_matrix/client/v1/rooms/{room}/relations/{}", urlencode(&root)), None).await;
    assert_eq!(all["chunk"].as_array().unwrap().len(), 4);
    let threaded = bob
        .ok(Method::GET, &format!("/_matrix/client/v1/rooms/{room}/relations/{}/m.thread", urlencode(&root)), None)
        .await;
    assert_eq!(threaded["chunk"].as_array().unwrap().len(), 2);
    assert_eq!(threaded["chunk"][1]["event_id"], reply.as_str(), "newest first");
    let reactions = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v1/rooms/{room}/relations/{}/m.annotation/m.reaction", urlencode(&root)),
            None,
        )
        .await;
    assert_eq!(reactions["chunk"][0]["content"]["m.relates_to"]["key"], "👍");
    let page = bob
        .ok(Method::GET, &format!("/_matrix/client/v1/rooms/{room}/relations/{}?limit=1", urlencode(&root)), None)
        .await;
    assert!(page["next_batch"].is_string());
    // Threads list: only the root with replies, with its summary.
    let threads = bob.ok(Method::GET, &format!("/_matrix/client/v1/rooms/{room}/threads"), None).await;
    let chunk = threads["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 1);
    assert_eq!(chunk[0]["event_id"], root.as_str());
    assert_eq!(chunk[0]["unsigned"]["m.relations"]["m.thread"]["count"], 2);
    assert_eq!(chunk[0]["unsigned"]["m.relations"]["m.thread"]["current_user_participated"], true);
    // The root carries its thread's summary (the bundled aggregation) wherever a client reads
    // it: /event, /messages, /context and /sync; another event carries none.
    let thread_of = |events: &Value, id: &str| {
        events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event_id"] == id)
            .map(|e| e["unsigned"]["m.relations"]["m.thread"].clone())
    };
    let event = bob.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/event/{}", urlencode(&root)), None).await;
    let summary = &event["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(summary["count"], 2);
    assert_eq!(summary["latest_event"]["content"]["body"], "Merci");
    assert_eq!(summary["current_user_participated"], true);
    let msgs = bob.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), None).await;
    assert_eq!(thread_of(&msgs["chunk"], &root).unwrap()["count"], 2);
    assert_eq!(thread_of(&msgs["chunk"], &other_root), Some(Value::Null));
    let context =
        bob.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/context/{}", urlencode(&other_root)), None).await;
    assert_eq!(thread_of(&context["events_before"], &root).unwrap()["count"], 2);
    let synced = bob.sync(None, "").await;
    let timeline = &synced["rooms"]["join"][&room]["timeline"]["events"];
    assert_eq!(thread_of(timeline, &root).unwrap()["latest_event"]["sender"], alice.user_id.as_str());
    // A reader who took no part in the thread is told so.
    let dave = server.register("dave").await;
    dave.join(&room).await;
    let event =
        dave.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/event/{}", urlencode(&root)), None).await;
    assert_eq!(event["unsigned"]["m.relations"]["m.thread"]["current_user_participated"], false);
    let carol = server.register("carol").await;
    let mine = carol.get(&format!("/_matrix/client/v1/rooms/{room}/threads?include=participated")).await;
    assert_error(&mine, 403, "M_FORBIDDEN");
}

async fn history_visibility_bounds_what_users_read(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "initial_state": [{ "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "joined" } }] }))
        .await;
    let before = alice.send_text(&room, "avant l'arrivée de Bob").await;
    bob.join(&room).await;
    alice.send_text(&room, "après l'arrivée de Bob").await;
    let msgs = bob.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), None).await;
    assert_eq!(bodies(&msgs["chunk"]), vec!["après l'arrivée de Bob"]);
    assert_error(
        &bob.get(&format!("/_matrix/client/v3/rooms/{room}/event/{}", urlencode(&before))).await,
        404,
        "M_NOT_FOUND",
    );
    // After leaving, Bob reads up to his departure, not beyond.
    bob.ok(Method::POST, &format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&json!({}))).await;
    alice.send_text(&room, "après le départ de Bob").await;
    let msgs = bob.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), None).await;
    assert_eq!(bodies(&msgs["chunk"]), vec!["après l'arrivée de Bob"]);
    // With shared visibility, a newcomer reads the history.
    let shared = alice.create_room(json!({ "preset": "public_chat" })).await;
    alice.send_text(&shared, "historique partagé").await;
    let carol = server.register("carol").await;
    carol.join(&shared).await;
    let msgs = carol.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{shared}/messages?dir=b&limit=50"), None).await;
    assert_eq!(bodies(&msgs["chunk"]), vec!["historique partagé"]);

    // A change of the visibility is seen by whoever the visibility before or after it lets
    // see it: here the change to `joined` (shared before it) and the one to `shared`, not the
    // one to `invited` (joined before it), nor the messages they hid.
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility/");
    for (visibility, text) in [("joined", "un"), ("invited", "deux"), ("shared", "trois")] {
        alice.ok(Method::PUT, &path, Some(&json!({ "history_visibility": visibility }))).await;
        alice.send_text(&room, text).await;
    }
    let dave = server.register("dave").await;
    dave.join(&room).await;
    let msgs = dave.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=50"), None).await;
    let chunk = msgs["chunk"].as_array().unwrap();
    let changes: Vec<&str> = chunk
        .iter()
        .filter(|e| e["type"] == "m.room.history_visibility")
        .filter_map(|e| e["content"]["history_visibility"].as_str())
        .collect();
    assert_eq!(changes, vec!["shared", "joined", "shared"], "{msgs}");
    assert_eq!(bodies(&msgs["chunk"]), vec!["trois"]);
}

async fn timestamp_to_event_finds_the_closest_event(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({ "preset": "private_chat" })).await;
    let first = alice.send_text(&room, "premier").await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let second = alice.send_text(&room, "second").await;
    let ts_of = |id: &str| {
        let (alice, room, id) = (alice.clone(), room.clone(), id.to_owned());
        async move {
            let e =
                alice.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/event/{}", urlencode(&id)), None).await;
            e["origin_server_ts"].as_i64().unwrap()
        }
    };
    let (t1, t2) = (ts_of(&first).await, ts_of(&second).await);
    assert!(t2 > t1);
    let at = |ts: i64, dir: &str| format!("/_matrix/client/v1/rooms/{room}/timestamp_to_event?ts={ts}&dir={dir}");
    let v = alice.ok(Method::GET, &at(t1, "f"), None).await;
    assert_eq!((v["event_id"].as_str(), v["origin_server_ts"].as_i64()), (Some(first.as_str()), Some(t1)));
    assert_eq!(alice.ok(Method::GET, &at(t1 + 1, "f"), None).await["event_id"], second.as_str());
    assert_eq!(alice.ok(Method::GET, &at(t2 - 1, "b"), None).await["event_id"], first.as_str());
    assert_eq!(alice.ok(Method::GET, &at(t2 + 60_000, "b"), None).await["event_id"], second.as_str());
    assert_error(&alice.get(&at(t2 + 60_000, "f")).await, 404, "M_NOT_FOUND");
    // The room's first event, from the start of time.
    let created = alice.ok(Method::GET, &at(0, "f"), None).await;
    let create = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{room}/event/{}", urlencode(created["event_id"].as_str().unwrap())),
            None,
        )
        .await;
    assert_eq!(create["type"], "m.room.create");
    // Not for someone outside the room; bad parameters are refused.
    assert_error(&carol.get(&at(t1, "f")).await, 403, "M_FORBIDDEN");
    let (status, v) = alice.get(&at(t1, "sideways")).await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = alice.get(&format!("/_matrix/client/v1/rooms/{room}/timestamp_to_event?dir=f")).await;
    assert_eq!(status, 400, "{v}");
}
