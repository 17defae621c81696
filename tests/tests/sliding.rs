//! Simplified sliding sync (MSC4186) as Element X sends it, and room previews (MSC3266): lists
//! ordered by the last bump event, windows, rooms sent whole once then by what changed,
//! required state (`$LAZY`, `$ME`, wildcards), long polls woken by new events, extensions,
//! positions that belong to one connection of one device, and the errors of bad requests.

use std::time::{Duration, Instant};

use diplomatie_tests::{assert_error, backend_tests, urlencode, Backend, Client, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

backend_tests!(
    lists_windows_and_incremental_rooms,
    long_polls_wake_and_extensions_answer,
    positions_belong_to_their_connection,
    room_previews_before_joining
);

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

async fn sliding(c: &Client, pos: Option<&str>, timeout_ms: u64, body: &Value) -> (u16, Value) {
    let mut path = format!("{PATH}?timeout={timeout_ms}");
    if let Some(p) = pos {
        path.push_str(&format!("&pos={p}"));
    }
    c.request(Method::POST, &path, Some(body)).await
}

async fn sliding_ok(c: &Client, pos: Option<&str>, timeout_ms: u64, body: &Value) -> Value {
    let (status, v) = sliding(c, pos, timeout_ms, body).await;
    assert_eq!(status, 200, "{v}");
    v
}

fn bodies(room: &Value) -> Vec<String> {
    room["timeline"]
        .as_array()
        .map(|t| t.iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// The room list as Element X asks for it: all rooms, a window, the last event of each.
fn room_list(range_end: u64, timeline_limit: u64) -> Value {
    json!({
        "conn_id": "room-list",
        "lists": { "all": {
            "ranges": [[0, range_end]],
            "timeline_limit": timeline_limit,
            "required_state": [["m.room.name", ""], ["m.room.member", "$LAZY"], ["m.room.member", "$ME"], ["m.room.create", ""]],
        } },
    })
}

async fn lists_windows_and_incremental_rooms(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut rooms = Vec::new();
    for name in ["Sahel", "Berlin", "Kiev"] {
        let room = alice.create_room(json!({ "preset": "public_chat", "name": name })).await;
        assert_eq!(bob.join(&room).await.0, 200);
        rooms.push(room);
    }
    alice.send_text(&rooms[0], "premier").await;
    alice.send_text(&rooms[2], "troisième").await;
    bob.send_text(&rooms[1], "deuxième").await;

    // Advertised in /versions.
    let (_, versions) = alice.get("/_matrix/client/versions").await;
    assert_eq!(versions["unstable_features"]["org.matrix.simplified_msc3575"], true);

    // The window of two: the rooms with the newest messages, whole.
    let first = sliding_ok(&alice, None, 0, &room_list(1, 1)).await;
    assert_eq!(first["lists"]["all"]["count"], 3, "{first}");
    let shown: Vec<&String> = first["rooms"].as_object().unwrap().keys().collect();
    assert_eq!(shown.len(), 2, "{first}");
    assert!(first["rooms"].get(&rooms[1]).is_some() && first["rooms"].get(&rooms[2]).is_some(), "{first}");
    let berlin = &first["rooms"][&rooms[1]];
    assert_eq!(berlin["initial"], true);
    assert_eq!(berlin["name"], "Berlin");
    assert_eq!(bodies(berlin), ["deuxième"]);
    assert_eq!(berlin["limited"], true, "only the last event of several");
    assert!(berlin["prev_batch"].is_string());
    assert_eq!(berlin["joined_count"], 2);
    assert!(berlin["bump_stamp"].as_u64().unwrap() > first["rooms"][&rooms[2]]["bump_stamp"].as_u64().unwrap());
    // Required state: the name, the creation, Bob as the timeline's sender ($LAZY) and Alice
    // ($ME); nobody else's membership.
    let state: Vec<(String, String)> = berlin["required_state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["type"].as_str().unwrap().to_owned(), e["state_key"].as_str().unwrap().to_owned()))
        .collect();
    for wanted in [
        ("m.room.name", ""),
        ("m.room.create", ""),
        ("m.room.member", bob.user_id.as_str()),
        ("m.room.member", alice.user_id.as_str()),
    ] {
        assert!(state.contains(&(wanted.0.to_owned(), wanted.1.to_owned())), "{wanted:?} in {state:?}");
    }
    assert!(!state.iter().any(|(t, _)| t == "m.room.join_rules"), "only what was asked: {state:?}");
    let pos = first["pos"].as_str().unwrap().to_owned();

    // A message in the room outside the window moves it up: it comes whole, the others do not
    // come again (nothing changed in them).
    alice.send_text(&rooms[0], "nouvelles du Sahel").await;
    let next = sliding_ok(&alice, Some(&pos), 0, &room_list(1, 1)).await;
    let shown: Vec<&String> = next["rooms"].as_object().unwrap().keys().collect();
    assert_eq!(shown, [&rooms[0]], "{next}");
    assert_eq!(next["rooms"][&rooms[0]]["initial"], true);
    assert_eq!(bodies(&next["rooms"][&rooms[0]]), ["nouvelles du Sahel"]);
    let pos = next["pos"].as_str().unwrap().to_owned();

    // A known room asked with a longer timeline than before comes with its newest events again,
    // as many as now asked (Synapse's expanded timeline), those after the position counted live.
    bob.send_text(&rooms[0], "reçu").await;
    bob.send_text(&rooms[0], "je transmets").await;
    let wider = room_list(1, 5);
    let expanded = sliding_ok(&alice, Some(&pos), 0, &wider).await;
    let sahel = &expanded["rooms"][&rooms[0]];
    assert!(sahel.get("initial").is_none(), "{expanded}");
    assert_eq!(bodies(sahel), ["premier", "nouvelles du Sahel", "reçu", "je transmets"], "{expanded}");
    assert_eq!(sahel["num_live"], 2);
    assert_eq!(sahel["limited"], true);

    // Then, at the same limit, a known room comes with what is new only.
    bob.send_text(&rooms[0], "et encore").await;
    let more = sliding_ok(&alice, expanded["pos"].as_str(), 0, &wider).await;
    let sahel = &more["rooms"][&rooms[0]];
    assert!(sahel.get("initial").is_none(), "{more}");
    assert_eq!(bodies(sahel), ["et encore"]);
    assert_eq!(sahel["num_live"], 1);
    assert_ne!(sahel["limited"], true, "false is left out");
    assert!(sahel.get("name").is_none(), "the name did not change: {sahel}");
    assert_eq!(sahel["notification_count"], 3, "{sahel}");

    // Reading the room (a receipt, no new event) changes its counts: it comes again with them,
    // and no timeline; a long poll is woken by the receipt.
    let pos = more["pos"].as_str().unwrap().to_owned();
    let last = sahel["timeline"].as_array().unwrap().last().unwrap()["event_id"].as_str().unwrap().to_owned();
    let waiting = {
        let (alice, pos, wider) = (alice.clone(), pos.clone(), wider.clone());
        tokio::spawn(async move { sliding_ok(&alice, Some(&pos), 10_000, &wider).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let receipt = format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", urlencode(&rooms[0]), urlencode(&last));
    assert_eq!(alice.post(&receipt, &json!({})).await.0, 200);
    let read = waiting.await.unwrap();
    let sahel = &read["rooms"][&rooms[0]];
    assert_eq!(sahel["notification_count"], 0, "{read}");
    assert!(bodies(sahel).is_empty(), "{read}");

    // A room left after the position comes once more, with the leave, then no more.
    let bob_first = sliding_ok(&bob, None, 0, &room_list(9, 1)).await;
    assert!(bob_first["rooms"].get(&rooms[1]).is_some(), "{bob_first}");
    let (status, _) = bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", urlencode(&rooms[1])), &json!({})).await;
    assert_eq!(status, 200);
    let left = sliding_ok(&bob, bob_first["pos"].as_str(), 0, &room_list(9, 1)).await;
    assert_eq!(left["lists"]["all"]["count"], 2, "{left}");
    let last = left["rooms"][&rooms[1]]["timeline"].as_array().unwrap().last().cloned().unwrap();
    assert_eq!((last["type"].as_str(), last["content"]["membership"].as_str()), (Some("m.room.member"), Some("leave")));
    let own = &left["rooms"][&rooms[1]]["required_state"][0];
    assert_eq!(
        (own["state_key"].as_str(), own["content"]["membership"].as_str()),
        (Some(bob.user_id.as_str()), Some("leave"))
    );
    let after = sliding_ok(&bob, left["pos"].as_str(), 0, &room_list(9, 1)).await;
    assert!(after["rooms"].get(&rooms[1]).is_none(), "{after}");

    // Filters: invites only.
    let carol = server.register("carol").await;
    let private = alice.create_room(json!({ "name": "Cabinet" })).await;
    assert_eq!(alice.invite(&private, &carol.user_id).await.0, 200);
    let invites = json!({ "lists": { "invites": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "is_invite": true } } } });
    let got = sliding_ok(&carol, None, 0, &invites).await;
    assert_eq!(got["lists"]["invites"]["count"], 1, "{got}");
    let invited = &got["rooms"][&private];
    assert_eq!(invited["name"], "Cabinet");
    let stripped = invited["invite_state"].as_array().unwrap();
    assert!(stripped.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == carol.user_id.as_str()));
    let not_invites =
        json!({ "lists": { "rooms": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "is_invite": false } } } });
    assert_eq!(sliding_ok(&carol, None, 0, &not_invites).await["lists"]["rooms"]["count"], 0);

    // A room subscription brings a room outside every window.
    let sub = json!({ "room_subscriptions": { &rooms[2]: { "timeline_limit": 2, "required_state": [["m.room.name", ""]] } } });
    let got = sliding_ok(&alice, None, 0, &sub).await;
    assert_eq!(got["rooms"][&rooms[2]]["name"], "Kiev", "{got}");
    assert_eq!(bodies(&got["rooms"][&rooms[2]]), ["troisième"]);
    // Not a room of the user: nothing.
    let other = bob.create_room(json!({ "name": "Privé" })).await;
    let got = sliding_ok(&alice, None, 0, &json!({ "room_subscriptions": { &other: { "timeline_limit": 2 } } })).await;
    assert!(got["rooms"].get(&other).is_none(), "{got}");
}

async fn long_polls_wake_and_extensions_answer(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat", "name": "Cellule" })).await;
    assert_eq!(bob.join(&room).await.0, 200);
    let body = json!({
        "conn_id": "encryption",
        "lists": { "all": { "ranges": [[0, 10]], "timeline_limit": 3 } },
        "extensions": {
            "to_device": { "enabled": true },
            "e2ee": { "enabled": true },
            "account_data": { "enabled": true },
            "receipts": { "enabled": true },
            "typing": { "enabled": true },
        },
    });
    let first = sliding_ok(&alice, None, 0, &body).await;
    let ext = &first["extensions"];
    assert_eq!(ext["e2ee"]["device_one_time_keys_count"]["signed_curve25519"], 0, "{first}");
    assert!(ext["to_device"]["next_batch"].is_string(), "{first}");
    assert!(
        ext["account_data"]["global"].as_array().is_some_and(|g| g.iter().any(|e| e["type"] == "m.push_rules"))
            || ext.get("account_data").is_none(),
        "{first}"
    );
    let pos = first["pos"].as_str().unwrap().to_owned();

    // Nothing new: the request waits its timeout, then answers nothing.
    let started = Instant::now();
    let idle = sliding_ok(&alice, Some(&pos), 300, &body).await;
    assert!(started.elapsed() >= Duration::from_millis(250), "it waited");
    assert!(idle["rooms"].as_object().is_none_or(|r| r.is_empty()), "{idle}");
    let pos = idle["pos"].as_str().unwrap().to_owned();

    // A message wakes a long poll at once.
    let waiting = {
        let alice = alice.clone();
        let body = body.clone();
        let pos = pos.clone();
        tokio::spawn(async move { sliding_ok(&alice, Some(&pos), 20_000, &body).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    bob.send_text(&room, "réveil").await;
    let woken = waiting.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "woken by the message, not the timeout");
    assert_eq!(bodies(&woken["rooms"][&room]), ["réveil"], "{woken}");
    let pos = woken["pos"].as_str().unwrap().to_owned();

    // Typing and receipts of the rooms shown.
    bob.put(
        &format!("/_matrix/client/v3/rooms/{}/typing/{}", urlencode(&room), urlencode(&bob.user_id)),
        &json!({ "typing": true, "timeout": 30000 }),
    )
    .await;
    let event = woken["rooms"][&room]["timeline"][0]["event_id"].as_str().unwrap().to_owned();
    let (status, _) = bob
        .post(
            &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", urlencode(&room), urlencode(&event)),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let got = sliding_ok(&alice, Some(&pos), 0, &body).await;
    let ext = &got["extensions"];
    assert_eq!(ext["typing"]["rooms"][&room]["content"]["user_ids"], json!([bob.user_id]), "{got}");
    assert!(ext["receipts"]["rooms"][&room]["content"][&event]["m.read"].get(&bob.user_id).is_some(), "{got}");
    // The extensions' selectors: typing for another list only, receipts for the room's
    // subscription (the same changes, read again from the same position).
    let mut selected = body.clone();
    selected["lists"]["other"] = json!({ "ranges": [[0, 0]], "timeline_limit": 1, "filters": { "is_invite": true } });
    selected["room_subscriptions"] = json!({ &room: { "timeline_limit": 1 } });
    selected["extensions"]["typing"] = json!({ "enabled": true, "lists": ["other"], "rooms": [] });
    selected["extensions"]["receipts"] = json!({ "enabled": true, "lists": [], "rooms": [&room] });
    let picked = sliding_ok(&alice, Some(&pos), 0, &selected).await;
    assert!(picked["extensions"]["typing"]["rooms"].get(&room).is_none(), "{picked}");
    assert!(picked["extensions"]["receipts"]["rooms"].get(&room).is_some(), "{picked}");
    selected["extensions"]["receipts"] = json!({ "enabled": true, "lists": ["other"], "rooms": ["*"] });
    selected["extensions"]["typing"] = json!({ "enabled": true, "lists": ["*"] });
    let picked = sliding_ok(&alice, Some(&pos), 0, &selected).await;
    assert!(picked["extensions"]["typing"]["rooms"].get(&room).is_some(), "{picked}");
    assert!(picked["extensions"]["receipts"]["rooms"].get(&room).is_some(), "every subscription: {picked}");
    let pos = got["pos"].as_str().unwrap().to_owned();

    // To-device messages, acknowledged by the extension's own token.
    let (status, _) = bob
        .put(
            "/_matrix/client/v3/sendToDevice/m.test/t1",
            &json!({ "messages": { &alice.user_id: { &alice.device_id: { "hello": "alice" } } } }),
        )
        .await;
    assert_eq!(status, 200);
    let got = sliding_ok(&alice, Some(&pos), 0, &body).await;
    let to_device = &got["extensions"]["to_device"];
    assert_eq!(to_device["events"][0]["content"]["hello"], "alice", "{got}");
    let since = to_device["next_batch"].as_str().unwrap().to_owned();
    let mut acked = body.clone();
    acked["extensions"]["to_device"]["since"] = json!(since);
    let again = sliding_ok(&alice, Some(got["pos"].as_str().unwrap()), 0, &acked).await;
    assert!(again["extensions"]["to_device"]["events"].as_array().is_none_or(|e| e.is_empty()), "{again}");
}

async fn positions_belong_to_their_connection(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    alice.create_room(json!({ "name": "Salle" })).await;
    let body = room_list(5, 1);
    let first = sliding_ok(&alice, None, 0, &body).await;
    let pos = first["pos"].as_str().unwrap().to_owned();
    // The same position, asked again (a lost answer), is still known.
    assert_eq!(sliding(&alice, Some(&pos), 0, &body).await.0, 200);
    // Unknown positions, another connection's, another user's: M_UNKNOWN_POS, 400.
    assert_error(&sliding(&alice, Some("999999"), 0, &body).await, 400, "M_UNKNOWN_POS");
    assert_error(&sliding(&alice, Some("not-a-position"), 0, &body).await, 400, "M_UNKNOWN_POS");
    let mut other_connection = body.clone();
    other_connection["conn_id"] = json!("encryption");
    assert_error(&sliding(&alice, Some(&pos), 0, &other_connection).await, 400, "M_UNKNOWN_POS");
    assert_error(&sliding(&bob, Some(&pos), 0, &body).await, 400, "M_UNKNOWN_POS");
    // Another device of Alice's does not share the connection either.
    let laptop = server.login("alice", "correct horse").await;
    assert_error(&sliding(&laptop, Some(&pos), 0, &body).await, 400, "M_UNKNOWN_POS");

    // Bad requests: an inverted range, a malformed body, no token.
    let inverted = json!({ "lists": { "all": { "ranges": [[5, 1]], "timeline_limit": 1 } } });
    assert_error(&sliding(&alice, None, 0, &inverted).await, 400, "M_INVALID_PARAM");
    let negative = json!({ "lists": { "all": { "ranges": [[-1, 3]], "timeline_limit": 1 } } });
    assert_eq!(sliding(&alice, None, 0, &negative).await.0, 400);
    let (status, v) = alice.raw(Method::POST, PATH, b"{not json".to_vec()).await;
    assert_eq!(status, 400, "{v}");
    let anonymous = server.client();
    assert_error(&sliding(&anonymous, None, 0, &body).await, 401, "M_MISSING_TOKEN");
    // A huge range answers what there is.
    let huge = json!({ "lists": { "all": { "ranges": [[0, 4_000_000_000u64]], "timeline_limit": 1 } } });
    let got = sliding_ok(&alice, None, 0, &huge).await;
    assert_eq!(got["lists"]["all"]["count"], 1);
}

async fn room_previews_before_joining(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let public = alice
        .create_room(json!({ "preset": "public_chat", "name": "Agora", "topic": "Ouvert", "room_alias_name": "agora" }))
        .await;
    let private = alice.create_room(json!({ "name": "Cabinet" })).await;
    let (_, versions) = bob.get("/_matrix/client/versions").await;
    assert_eq!(versions["unstable_features"]["im.nheko.summary"], true);

    // Bob previews the public room, by id and by alias, before joining it.
    let (status, v) = bob.get(&format!("/_matrix/client/v1/room_summary/{}", urlencode(&public))).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!((v["name"].as_str(), v["topic"].as_str()), (Some("Agora"), Some("Ouvert")));
    assert!(v.get("join_rule").is_none_or(|j| j == "public"), "public, stated or by default: {v}");
    assert_eq!(v["num_joined_members"], 1);
    assert!(v.get("membership").is_none(), "{v}");
    let alias = format!("#agora:{}", alice.user_id.split(':').nth(1).unwrap());
    let (status, by_alias) = bob.get(&format!("/_matrix/client/v1/room_summary/{}", urlencode(&alias))).await;
    assert_eq!((status, by_alias["room_id"].as_str()), (200, Some(public.as_str())), "{by_alias}");
    // The unstable path answers the same.
    let (status, _) =
        bob.get(&format!("/_matrix/client/unstable/im.nheko.summary/rooms/{}/summary", urlencode(&public))).await;
    assert_eq!(status, 200);
    // Once joined, the membership shows.
    assert_eq!(bob.join(&public).await.0, 200);
    let (_, v) = bob.get(&format!("/_matrix/client/v1/room_summary/{}", urlencode(&public))).await;
    assert_eq!(v["membership"], "join");

    // A private room is not previewed; an unknown one is not found.
    assert_error(
        &bob.get(&format!("/_matrix/client/v1/room_summary/{}", urlencode(&private))).await,
        403,
        "M_FORBIDDEN",
    );
    let unknown = format!("!nowhere:{}", alice.user_id.split(':').nth(1).unwrap());
    assert_error(
        &bob.get(&format!("/_matrix/client/v1/room_summary/{}", urlencode(&unknown))).await,
        404,
        "M_NOT_FOUND",
    );
    // Without a token: public rooms only.
    let anonymous = server.client();
    assert_eq!(anonymous.get(&format!("/_matrix/client/v1/room_summary/{}", urlencode(&public))).await.0, 200);
    assert_error(
        &anonymous.get(&format!("/_matrix/client/v1/room_summary/{}", urlencode(&private))).await,
        403,
        "M_FORBIDDEN",
    );

    // A preview from the room's state (matrix-rust-sdk's `RoomPreview::from_state_events`):
    // a world-readable room's state and joined members read by a non-member; not a room whose
    // history is shared with members only.
    let readable = alice
        .create_room(json!({ "name": "Vitrine", "initial_state": [{ "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "world_readable" } }] }))
        .await;
    let carol = server.register("carol").await;
    let (status, state) = carol.get(&format!("/_matrix/client/v3/rooms/{readable}/state")).await;
    assert_eq!(status, 200, "{state}");
    assert!(state.as_array().unwrap().iter().any(|e| e["type"] == "m.room.name"), "{state}");
    let (status, members) = carol.get(&format!("/_matrix/client/v3/rooms/{readable}/joined_members")).await;
    assert_eq!(status, 200, "{members}");
    assert!(members["joined"].get(&alice.user_id).is_some(), "{members}");
    for path in ["state", "joined_members"] {
        assert_error(&carol.get(&format!("/_matrix/client/v3/rooms/{private}/{path}")).await, 403, "M_FORBIDDEN");
    }
}
