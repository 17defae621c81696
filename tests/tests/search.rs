//! Server-side search (client-server spec, "Server Side Search"): `room_events` over bodies,
//! names and topics, ordering, pagination, context, state and groups; what the user may not
//! read never shows; the index survives restarts and rebuilds from the database.

use diplomatie_tests::{assert_error, backend_tests, urlencode, Backend, Client, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

backend_tests!(search_finds_what_the_user_may_read, search_survives_restarts_and_rebuilds);

async fn search(c: &Client, criteria: Value, next_batch: Option<&str>) -> Value {
    let path = match next_batch {
        Some(n) => format!("/_matrix/client/v3/search?next_batch={n}"),
        None => "/_matrix/client/v3/search".to_owned(),
    };
    let v = c.ok(Method::POST, &path, Some(&json!({ "search_categories": { "room_events": criteria } }))).await;
    v["search_categories"]["room_events"].clone()
}

fn bodies(result: &Value) -> Vec<String> {
    result["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let c = &r["result"]["content"];
            c["body"].as_str().or(c["name"].as_str()).or(c["topic"].as_str()).unwrap().to_owned()
        })
        .collect()
}

async fn search_finds_what_the_user_may_read(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice
        .create_room(json!({
            "preset": "public_chat", "name": "Cellule Sahel", "topic": "Suivi de la crise",
            "initial_state": [{ "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "joined" } }],
        }))
        .await;
    assert_eq!(bob.join(&room).await.0, 200);
    let secret = alice.create_room(json!({ "name": "Cabinet" })).await;
    alice.send_text(&room, "Réunion de crise à Berlin").await;
    let sahel = alice.send_text(&room, "crise au Sahel").await;
    alice.send_text(&room, "déjeuner à midi").await;
    alice.send_text(&secret, "crise secrète").await;
    // Encrypted events are never indexed, whatever their content says.
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.encrypted/e1"),
            Some(&json!({ "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "crise", "body": "crise" })),
        )
        .await;

    // Bob finds the messages of his room, accents folded, not Alice's private room.
    let found = search(&bob, json!({ "search_term": "crise", "keys": ["content.body"] }), None).await;
    let mut got = bodies(&found);
    got.sort();
    assert_eq!(got, vec!["Réunion de crise à Berlin", "crise au Sahel"]);
    assert_eq!(found["highlights"], json!(["crise"]));
    assert!(found["count"].as_u64().unwrap() >= 2);
    assert_eq!(bodies(&search(&bob, json!({ "search_term": "REUNION" }), None).await), ["Réunion de crise à Berlin"]);
    // All words must be there.
    assert_eq!(
        bodies(&search(&bob, json!({ "search_term": "crise Sahel", "keys": ["content.body"] }), None).await),
        ["crise au Sahel"]
    );
    // Asking for a room he was never in gives nothing.
    let none = search(&bob, json!({ "search_term": "crise", "filter": { "rooms": [secret] } }), None).await;
    assert_eq!(none["results"], json!([]));
    // Names and topics (set before Bob joined: with `joined` visibility, only Alice reads them).
    assert_eq!(
        search(&bob, json!({ "search_term": "sahel", "keys": ["content.name"] }), None).await["results"],
        json!([])
    );
    assert_eq!(
        bodies(&search(&alice, json!({ "search_term": "sahel", "keys": ["content.name"] }), None).await),
        ["Cellule Sahel"]
    );
    assert_eq!(
        bodies(&search(&alice, json!({ "search_term": "suivi", "keys": ["content.topic"] }), None).await),
        ["Suivi de la crise"]
    );

    // Newest first, one by one.
    let recent =
        json!({ "search_term": "crise", "keys": ["content.body"], "order_by": "recent", "filter": { "limit": 1 } });
    let first = search(&bob, recent.clone(), None).await;
    assert_eq!(bodies(&first), ["crise au Sahel"]);
    let next = first["next_batch"].as_str().unwrap().to_owned();
    let second = search(&bob, recent.clone(), Some(&next)).await;
    assert_eq!(bodies(&second), ["Réunion de crise à Berlin"]);
    assert!(second.get("next_batch").is_none());

    // Context, profiles, state and groups.
    let full = search(
        &bob,
        json!({
            "search_term": "sahel", "keys": ["content.body"],
            "event_context": { "before_limit": 1, "after_limit": 1, "include_profile": true },
            "include_state": true,
            "groupings": { "group_by": [{ "key": "room_id" }] },
        }),
        None,
    )
    .await;
    let result = &full["results"][0];
    assert_eq!(result["result"]["event_id"], sahel.as_str());
    assert_eq!(result["context"]["events_before"][0]["content"]["body"], "Réunion de crise à Berlin");
    assert_eq!(result["context"]["events_after"][0]["content"]["body"], "déjeuner à midi");
    assert!(result["context"]["profile_info"].get(alice.user_id.as_str()).is_some());
    assert!(full["state"][room.as_str()].as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"));
    assert_eq!(full["groups"]["room_id"][room.as_str()]["results"], json!([sahel]));

    // Carol joins later: history visibility `joined` hides what came before.
    assert_eq!(carol.join(&room).await.0, 200);
    assert_eq!(
        search(&carol, json!({ "search_term": "crise", "keys": ["content.body"] }), None).await["results"],
        json!([])
    );
    alice.send_text(&room, "nouvelle crise").await;
    assert_eq!(
        bodies(&search(&carol, json!({ "search_term": "crise", "keys": ["content.body"] }), None).await),
        ["nouvelle crise"]
    );

    // A redacted message is no longer found.
    alice
        .ok(Method::PUT, &format!("/_matrix/client/v3/rooms/{room}/redact/{}/r1", urlencode(&sahel)), Some(&json!({})))
        .await;
    assert_eq!(
        bodies(&search(&bob, json!({ "search_term": "sahel", "keys": ["content.body"] }), None).await),
        Vec::<String>::new()
    );

    // Bad input.
    let post = |body: Value| {
        let bob = bob.clone();
        async move { bob.post("/_matrix/client/v3/search", &body).await }
    };
    assert_error(
        &bob.post(
            "/_matrix/client/v3/search?next_batch=abc",
            &json!({ "search_categories": { "room_events": { "search_term": "crise" } } }),
        )
        .await,
        400,
        "M_INVALID_PARAM",
    );
    assert_eq!(post(json!({ "search_categories": { "room_events": {} } })).await.0, 400);
    assert_eq!(
        post(json!({ "search_categories": { "room_events": { "search_term": "x", "order_by": "loudest" } } })).await.0,
        400
    );
    assert_error(
        &post(json!({ "search_categories": { "room_events": { "search_term": "x", "keys": ["content.secret"] } } }))
            .await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &server.client().post("/_matrix/client/v3/search", &json!({ "search_categories": {} })).await,
        401,
        "M_MISSING_TOKEN",
    );
}

async fn search_survives_restarts_and_rebuilds(backend: Backend) {
    let mut server = TestServer::start(backend, &[]).await;
    let mut alice = server.register("alice").await;
    let room = alice.create_room(json!({ "name": "Archives" })).await;
    for i in 0..30 {
        alice.send_text(&room, &format!("télégramme numéro {i} diplomatique")).await;
    }
    let query = json!({ "search_term": "diplomatique", "filter": { "limit": 50 } });
    assert_eq!(search(&alice, query.clone(), None).await["results"].as_array().unwrap().len(), 30);

    // Killed: what was committed is found after the restart.
    server.kill().await;
    server.launch().await;
    alice.base = server.base.clone();
    assert_eq!(search(&alice, query.clone(), None).await["results"].as_array().unwrap().len(), 30);

    // Index files lost: a rebuild from the database brings everything back.
    server.kill().await;
    std::fs::remove_dir_all(server.data_dir.path().join("search")).unwrap();
    let out = server.command(&["search", "rebuild"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("rebuilt"));
    server.launch().await;
    alice.base = server.base.clone();
    let found = search(&alice, query, None).await;
    assert_eq!(found["results"].as_array().unwrap().len(), 30);
}
