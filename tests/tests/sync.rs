//! `/sync`: initial and incremental, long-poll, filters, full state, lazy-loaded members,
//! limited timelines, the invite/leave/knock sections, typing, receipts, account data, tags,
//! presence and unread counts (client-server spec, "Syncing" and the modules it reports).

use std::time::Duration;

use diplomatie_tests::{assert_error, backend_tests, urlencode, Backend, Client, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

backend_tests!(
    initial_then_incremental_sync,
    long_poll_wakes_on_new_events,
    filters_limit_and_lazy_load,
    invite_leave_and_knock_sections,
    typing_receipts_and_unread_counts,
    account_data_tags_and_presence,
    every_stream_is_seen_across_a_restart,
    what_the_filters_leave_and_what_a_left_room_shows,
    peeking_follows_a_world_readable_room_on_one_device,
);

fn timeline_bodies(sync: &Value, room: &str) -> Vec<String> {
    section_bodies(sync, "join", room)
}

/// The bodies of the messages in a room's timeline, in a section of `rooms` (`join`, `peek`).
fn section_bodies(sync: &Value, section: &str, room: &str) -> Vec<String> {
    sync["rooms"][section][room]["timeline"]["events"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

async fn initial_then_incremental_sync(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({ "name": "Synchro" })).await;
    alice.send_text(&room, "premier").await;
    let initial = alice.sync(None, "").await;
    let joined = &initial["rooms"]["join"][&room];
    assert!(joined["timeline"]["events"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"));
    assert_eq!(timeline_bodies(&initial, &room), vec!["premier"]);
    assert_eq!(joined["summary"]["m.joined_member_count"], 1);
    let since = initial["next_batch"].as_str().unwrap().to_owned();
    // Nothing new: the room is absent.
    let empty = alice.sync(Some(&since), "timeout=0").await;
    assert!(empty["rooms"]["join"].get(&room).is_none(), "{empty}");
    alice.send_text(&room, "second").await;
    let inc = alice.sync(Some(&since), "timeout=0").await;
    assert_eq!(timeline_bodies(&inc, &room), vec!["second"]);
    // Not limited (`limited` is false, or absent: the spec's default).
    assert!(!inc["rooms"]["join"][&room]["timeline"]["limited"].as_bool().unwrap_or(false), "{inc}");
    // full_state: the whole state again.
    let full = alice.sync(Some(&since), "full_state=true").await;
    let state = full["rooms"]["join"][&room]["state"]["events"].as_array().unwrap();
    assert!(state.iter().any(|e| e["type"] == "m.room.name"), "{full}");
    assert_error(&alice.get("/_matrix/client/v3/sync?since=garbage").await, 400, "M_INVALID_PARAM");
}

async fn long_poll_wakes_on_new_events(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let since = bob.sync(None, "").await["next_batch"].as_str().unwrap().to_owned();
    // The waiting sync returns with the event (it would return empty after 20 s otherwise).
    let woke = sync_woken_by_message(&bob, &since, &alice, &room, "réveil").await;
    assert_eq!(timeline_bodies(&woke, &room), vec!["réveil"]);
}

async fn set_history_visibility(by: &Client, room: &str, visibility: &str) {
    let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility/");
    by.ok(Method::PUT, &path, Some(&json!({ "history_visibility": visibility }))).await;
}

/// A sync of `reader` from `since` that waits (for up to 20 s), then `writer`'s message into
/// `room`: the sync's answer, once the message woke it.
async fn sync_woken_by_message(reader: &Client, since: &str, writer: &Client, room: &str, text: &str) -> Value {
    let waiting = {
        let (reader, since) = (reader.clone(), since.to_owned());
        tokio::spawn(async move { reader.sync(Some(&since), "timeout=20000").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the sync waits while nothing happens");
    writer.send_text(room, text).await;
    waiting.await.unwrap()
}

async fn filters_limit_and_lazy_load(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    carol.join(&room).await;
    for i in 0..6 {
        bob.send_text(&room, &format!("b{i}")).await;
    }
    // A stored filter: limit 3 and lazy-loaded members.
    let filter = json!({ "room": { "timeline": { "limit": 3 }, "state": { "lazy_load_members": true } } });
    let created = alice.ok(Method::POST, "/_matrix/client/v3/user/@alice:localhost/filter", Some(&filter)).await;
    let id = created["filter_id"].as_str().unwrap();
    let stored = alice.ok(Method::GET, &format!("/_matrix/client/v3/user/@alice:localhost/filter/{id}"), None).await;
    assert_eq!(stored["room"]["timeline"]["limit"], 3);
    let s = alice.sync(None, &format!("filter={id}")).await;
    let joined = &s["rooms"]["join"][&room];
    assert_eq!(timeline_bodies(&s, &room), vec!["b3", "b4", "b5"]);
    assert_eq!(joined["timeline"]["limited"], true);
    let prev = joined["timeline"]["prev_batch"].as_str().unwrap();
    let members: Vec<&str> = joined["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap())
        .collect();
    assert!(members.contains(&"@bob:localhost") && members.contains(&"@alice:localhost"), "{members:?}");
    assert!(!members.contains(&"@carol:localhost"), "carol sent nothing: {members:?}");
    // Carol speaks: the next sync brings her member event, which the device was never sent;
    // she speaks again, and it does not come a second time.
    let members_in = |s: &Value| -> Vec<String> {
        let state = s["rooms"]["join"][&room]["state"]["events"].as_array().cloned().unwrap_or_default();
        state
            .iter()
            .filter(|e| e["type"] == "m.room.member")
            .map(|e| e["state_key"].as_str().unwrap().to_owned())
            .collect()
    };
    let since = s["next_batch"].as_str().unwrap().to_owned();
    carol.send_text(&room, "c1").await;
    let next = alice.sync(Some(&since), &format!("timeout=0&filter={id}")).await;
    assert_eq!(members_in(&next), vec!["@carol:localhost"], "{next}");
    let since = next["next_batch"].as_str().unwrap().to_owned();
    carol.send_text(&room, "c2").await;
    let next = alice.sync(Some(&since), &format!("timeout=0&filter={id}")).await;
    assert_eq!(timeline_bodies(&next, &room), vec!["c2"]);
    assert!(members_in(&next).is_empty(), "{next}");
    // prev_batch continues backwards where the timeline starts.
    let older = alice
        .ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=2&from={prev}"), None)
        .await;
    let b: Vec<&str> =
        older["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(b, vec!["b2", "b1"]);
    // An inline filter that excludes the room.
    let inline = urlencode(&json!({ "room": { "not_rooms": [room] } }).to_string());
    let s = alice.sync(None, &format!("filter={inline}")).await;
    assert!(s["rooms"]["join"].get(&room).is_none());
    // A timeline limit of 0: no event, the room's state alone (here its members only), and
    // where to page back from.
    let none = urlencode(
        &json!({ "room": { "timeline": { "limit": 0 }, "state": { "types": ["m.room.member"] } } }).to_string(),
    );
    let s = alice.sync(None, &format!("filter={none}")).await;
    let joined = &s["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["events"], json!([]), "{joined}");
    assert_eq!(joined["timeline"]["limited"], true);
    assert!(joined["timeline"]["prev_batch"].is_string(), "{joined}");
    let state = joined["state"]["events"].as_array().unwrap();
    assert!(!state.is_empty() && state.iter().all(|e| e["type"] == "m.room.member"), "{joined}");
    // The federation format: events as servers exchange them, with their ids.
    let pdus = urlencode(&json!({ "event_format": "federation", "room": { "timeline": { "limit": 1 } } }).to_string());
    let s = alice.sync(None, &format!("filter={pdus}")).await;
    let last = &s["rooms"]["join"][&room]["timeline"]["events"][0];
    assert_eq!(last["content"]["body"], "c2", "{last}");
    for key in ["event_id", "room_id", "prev_events", "auth_events", "depth", "hashes", "signatures"] {
        assert!(last.get(key).is_some(), "{key} in {last}");
    }
    assert_error(&alice.get("/_matrix/client/v3/user/@alice:localhost/filter/999").await, 404, "M_NOT_FOUND");
    assert_error(&alice.get("/_matrix/client/v3/user/@bob:localhost/filter/1").await, 403, "M_FORBIDDEN");
}

async fn invite_leave_and_knock_sections(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let since = bob.sync(None, "").await["next_batch"].as_str().unwrap().to_owned();
    let room = alice.create_room(json!({ "name": "Invitation", "invite": ["@bob:localhost"] })).await;
    alice.send_text(&room, "avant l'arrivée").await;
    let s = bob.sync(Some(&since), "timeout=0").await;
    let invite = &s["rooms"]["invite"][&room]["invite_state"]["events"];
    assert!(invite
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Invitation"));
    assert!(invite
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.member" && e["state_key"] == "@bob:localhost"));
    let since = s["next_batch"].as_str().unwrap().to_owned();
    bob.join(&room).await;
    let s = bob.sync(Some(&since), "timeout=0").await;
    assert!(s["rooms"]["join"].get(&room).is_some(), "joined room appears in join: {s}");
    assert!(s["rooms"]["invite"].get(&room).is_none());
    // A room joined since the last sync starts as on a first sync: its newest events, those
    // before the join included (the history visibility is `shared`), not only the join.
    let joined = &s["rooms"]["join"][&room];
    assert_eq!(timeline_bodies(&s, &room), vec!["avant l'arrivée"], "{s}");
    assert!(joined["timeline"]["events"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"), "{s}");
    assert!(joined["timeline"]["prev_batch"].is_string());
    // Each event says what the reader's membership was at it (MSC4115): invited when the
    // message was sent, joined at the join, not yet a member at the room's creation.
    let membership_at = |pick: &dyn Fn(&Value) -> bool| {
        let events = joined["timeline"]["events"].as_array().unwrap();
        events.iter().find(|e| pick(e)).map(|e| e["unsigned"]["membership"].clone()).unwrap()
    };
    assert_eq!(membership_at(&|e| e["content"]["body"] == "avant l'arrivée"), "invite");
    assert_eq!(membership_at(&|e| e["type"] == "m.room.create"), "leave");
    assert_eq!(membership_at(&|e| e["state_key"] == "@bob:localhost" && e["content"]["membership"] == "join"), "join");
    // The next sync names the room once more, with nothing new in it, at once (a client may
    // handle its /join response after the sync that brought the join, and wait for a sync that
    // names the room); the one after does not.
    let started = std::time::Instant::now();
    let echo = bob.sync(Some(s["next_batch"].as_str().unwrap()), "timeout=5000").await;
    assert!(started.elapsed() < Duration::from_secs(4), "answered at once");
    assert!(echo["rooms"]["join"].get(&room).is_some(), "{echo}");
    assert!(timeline_bodies(&echo, &room).is_empty(), "{echo}");
    let after = bob.sync(Some(echo["next_batch"].as_str().unwrap()), "timeout=0").await;
    assert!(after["rooms"]["join"].get(&room).is_none(), "{after}");
    // Where the visibility is `joined`, what came before the join stays hidden.
    let closed = alice
        .create_room(json!({ "initial_state": [{ "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "joined" } }], "invite": ["@bob:localhost"] }))
        .await;
    alice.send_text(&closed, "secret").await;
    let before = bob.sync(Some(s["next_batch"].as_str().unwrap()), "timeout=0").await;
    bob.join(&closed).await;
    let s2 = bob.sync(Some(before["next_batch"].as_str().unwrap()), "timeout=0").await;
    assert!(s2["rooms"]["join"].get(&closed).is_some(), "{s2}");
    assert!(timeline_bodies(&s2, &closed).is_empty(), "{s2}");
    let since = s["next_batch"].as_str().unwrap().to_owned();
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/kick"),
            Some(&json!({ "user_id": "@bob:localhost" })),
        )
        .await;
    let s = bob.sync(Some(&since), "timeout=0").await;
    let left = &s["rooms"]["leave"][&room]["timeline"]["events"];
    assert!(left
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "leave"));
    // Knocks show in the knock section.
    let knockable = alice.create_room(json!({ "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }] })).await;
    let since = s["next_batch"].as_str().unwrap().to_owned();
    bob.ok(Method::POST, &format!("/_matrix/client/v3/knock/{knockable}"), Some(&json!({}))).await;
    let s = bob.sync(Some(&since), "timeout=0").await;
    assert!(s["rooms"]["knock"][&knockable]["knock_state"]["events"].is_array(), "{s}");
    // And the moderator sees the knock in the room's timeline.
    let a = alice.sync(None, "").await;
    let events = a["rooms"]["join"][&knockable]["timeline"]["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["content"]["membership"] == "knock"));
}

async fn typing_receipts_and_unread_counts(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let since = alice.sync(None, "").await["next_batch"].as_str().unwrap().to_owned();
    bob.ok(
        Method::PUT,
        &format!("/_matrix/client/v3/rooms/{room}/typing/@bob:localhost"),
        Some(&json!({ "typing": true, "timeout": 30000 })),
    )
    .await;
    let s = alice.sync(Some(&since), "timeout=0").await;
    let eph = s["rooms"]["join"][&room]["ephemeral"]["events"].as_array().unwrap().clone();
    let typing = eph.iter().find(|e| e["type"] == "m.typing").expect("typing event");
    assert_eq!(typing["content"]["user_ids"], json!(["@bob:localhost"]));
    assert_error(
        &bob.put(
            &format!("/_matrix/client/v3/rooms/{room}/typing/@alice:localhost"),
            &json!({ "typing": true, "timeout": 1000 }),
        )
        .await,
        403,
        "M_FORBIDDEN",
    );
    let since = s["next_batch"].as_str().unwrap().to_owned();
    let m1 = alice.send_text(&room, "un").await;
    alice.send_text(&room, "deux").await;
    let b = bob.sync(None, "").await;
    assert_eq!(b["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 2);
    // Bob reads the first message: a public receipt Alice sees, and one unread left.
    bob.ok(
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{}", urlencode(&m1)),
        Some(&json!({})),
    )
    .await;
    let s = alice.sync(Some(&since), "timeout=0").await;
    let eph = s["rooms"]["join"][&room]["ephemeral"]["events"].as_array().unwrap().clone();
    let receipt = eph.iter().find(|e| e["type"] == "m.receipt").expect("receipt event");
    assert!(receipt["content"][&m1]["m.read"]["@bob:localhost"]["ts"].is_number(), "{receipt}");
    let b = bob.sync(None, "").await;
    assert_eq!(b["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 1);
    // Private receipts are not shown to others; read markers set m.fully_read.
    let since = s["next_batch"].as_str().unwrap().to_owned();
    bob.ok(
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{room}/read_markers"),
        Some(&json!({ "m.fully_read": m1, "m.read.private": m1 })),
    )
    .await;
    let s = alice.sync(Some(&since), "timeout=0").await;
    let shown = s["rooms"]["join"].get(&room).map(|r| r["ephemeral"].to_string()).unwrap_or_default();
    assert!(!shown.contains("m.read.private"), "{shown}");
    let b = bob.sync(None, "").await;
    let data = b["rooms"]["join"][&room]["account_data"]["events"].as_array().unwrap().clone();
    assert!(data.iter().any(|e| e["type"] == "m.fully_read" && e["content"]["event_id"] == m1.as_str()));
    assert_error(
        &bob.post(&format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/%24nope"), &json!({})).await,
        404,
        "M_NOT_FOUND",
    );
}

async fn account_data_tags_and_presence(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let since = alice.sync(None, "").await["next_batch"].as_str().unwrap().to_owned();
    alice
        .ok(
            Method::PUT,
            "/_matrix/client/v3/user/@alice:localhost/account_data/org.example.prefs",
            Some(&json!({ "theme": "sombre" })),
        )
        .await;
    let got =
        alice.ok(Method::GET, "/_matrix/client/v3/user/@alice:localhost/account_data/org.example.prefs", None).await;
    assert_eq!(got["theme"], "sombre");
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/user/@alice:localhost/rooms/{room}/account_data/org.example.room"),
            Some(&json!({ "pin": true })),
        )
        .await;
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/user/@alice:localhost/rooms/{room}/tags/m.favourite"),
            Some(&json!({ "order": 0.5 })),
        )
        .await;
    let tags =
        alice.ok(Method::GET, &format!("/_matrix/client/v3/user/@alice:localhost/rooms/{room}/tags"), None).await;
    assert_eq!(tags["tags"]["m.favourite"]["order"], 0.5);
    let s = alice.sync(Some(&since), "timeout=0").await;
    let global = s["account_data"]["events"].as_array().unwrap();
    assert!(global.iter().any(|e| e["type"] == "org.example.prefs" && e["content"]["theme"] == "sombre"));
    let per_room = s["rooms"]["join"][&room]["account_data"]["events"].as_array().unwrap();
    assert!(per_room.iter().any(|e| e["type"] == "m.tag" && e["content"]["tags"]["m.favourite"]["order"] == 0.5));
    assert!(per_room.iter().any(|e| e["type"] == "org.example.room"));
    alice
        .ok(Method::DELETE, &format!("/_matrix/client/v3/user/@alice:localhost/rooms/{room}/tags/m.favourite"), None)
        .await;
    let tags =
        alice.ok(Method::GET, &format!("/_matrix/client/v3/user/@alice:localhost/rooms/{room}/tags"), None).await;
    assert_eq!(tags["tags"], json!({}));
    assert_error(
        &bob.put("/_matrix/client/v3/user/@alice:localhost/account_data/x", &json!({})).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(&alice.get("/_matrix/client/v3/user/@alice:localhost/account_data/unset").await, 404, "M_NOT_FOUND");
    // Presence: set, read, and seen by room mates in /sync.
    let since = bob.sync(None, "set_presence=offline").await["next_batch"].as_str().unwrap().to_owned();
    alice
        .ok(
            Method::PUT,
            "/_matrix/client/v3/presence/@alice:localhost/status",
            Some(&json!({ "presence": "unavailable", "status_msg": "En réunion" })),
        )
        .await;
    let p = bob.ok(Method::GET, "/_matrix/client/v3/presence/@alice:localhost/status", None).await;
    assert_eq!((p["presence"].clone(), p["status_msg"].clone()), (json!("unavailable"), json!("En réunion")));
    let s = bob.sync(Some(&since), "timeout=0&set_presence=offline").await;
    let events = s["presence"]["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["sender"] == "@alice:localhost" && e["content"]["status_msg"] == "En réunion"),
        "{s}"
    );
    assert_error(
        &alice.put("/_matrix/client/v3/presence/@alice:localhost/status", &json!({ "presence": "dancing" })).await,
        400,
        "M_INVALID_PARAM",
    );
}

/// What moved in each stream since a token is found whether the token predates the process
/// (read from the database) or not (the streams' marks kept in memory): new events, a new
/// membership, account data, receipts and presence.
async fn every_stream_is_seen_across_a_restart(backend: Backend) {
    let mut server = TestServer::start(backend, &[]).await;
    let mut alice = server.register("alice").await;
    let mut bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let other = alice.create_room(json!({ "preset": "public_chat" })).await;

    // Moves every stream, then checks that bob's sync from `since` sees each move.
    async fn move_streams(
        alice: &diplomatie_tests::Client,
        bob: &diplomatie_tests::Client,
        room: &str,
        other: &str,
        tag: &str,
    ) {
        let event = alice.send_text(room, tag).await;
        bob.join(other).await;
        let data = format!("/_matrix/client/v3/user/{}/account_data/org.example.{tag}", urlencode(&bob.user_id));
        bob.ok(Method::PUT, &data, Some(&json!({ "n": tag }))).await;
        let receipt = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{}", urlencode(&event));
        alice.ok(Method::POST, &receipt, Some(&json!({}))).await;
        let presence = format!("/_matrix/client/v3/presence/{}/status", urlencode(&alice.user_id));
        alice.ok(Method::PUT, &presence, Some(&json!({ "presence": "unavailable", "status_msg": tag }))).await;
        bob.ok(Method::POST, &format!("/_matrix/client/v3/rooms/{other}/leave"), Some(&json!({}))).await;
    }
    fn assert_moved(s: &Value, room: &str, other: &str, tag: &str) {
        assert_eq!(timeline_bodies(s, room), vec![tag], "the new message: {s}");
        assert!(s["rooms"]["leave"].get(other).is_some(), "the membership (joined then left): {s}");
        let data = s["account_data"]["events"].as_array().unwrap();
        assert!(data.iter().any(|e| e["type"] == format!("org.example.{tag}")), "account data: {s}");
        let ephemeral = s["rooms"]["join"][room]["ephemeral"]["events"].as_array().unwrap();
        assert!(ephemeral.iter().any(|e| e["type"] == "m.receipt"), "the receipt: {s}");
        let presence = s["presence"]["events"].as_array().unwrap();
        assert!(presence.iter().any(|e| e["content"]["status_msg"] == tag), "presence: {s}");
    }

    // A token from before a restart.
    let since = bob.sync(None, "set_presence=offline").await["next_batch"].as_str().unwrap().to_owned();
    move_streams(&alice, &bob, &room, &other, "before").await;
    server.kill().await;
    server.launch().await;
    for c in [&mut alice, &mut bob] {
        c.base = server.base.clone();
    }
    let s = bob.sync(Some(&since), "timeout=0&set_presence=offline").await;
    assert_moved(&s, &room, &other, "before");

    // A token from after it; and nothing new since the next one.
    let since = s["next_batch"].as_str().unwrap().to_owned();
    move_streams(&alice, &bob, &room, &other, "after").await;
    let s = bob.sync(Some(&since), "timeout=0&set_presence=offline").await;
    assert_moved(&s, &room, &other, "after");
    let next = s["next_batch"].as_str().unwrap().to_owned();
    let quiet = bob.sync(Some(&next), "timeout=0&set_presence=offline").await;
    assert!(quiet["rooms"]["join"].get(&room).is_none() && quiet["presence"]["events"] == json!([]), "{quiet}");
}

/// A room the filters leave nothing of is not shown; a new display name is no new room; a
/// room joined and left between two syncs shows its state in the leave section.
async fn what_the_filters_leave_and_what_a_left_room_shows(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    alice
        .ok(Method::PUT, &format!("/_matrix/client/v3/rooms/{room}/state/a.test.state/"), Some(&json!({ "k": 1 })))
        .await;
    let filter = json!({
        "room": { "timeline": { "types": [] }, "state": { "types": ["a.test.state"] }, "ephemeral": { "types": [] } },
        "presence": { "types": [] },
    });
    let filter = urlencode(&filter.to_string());
    let first = alice.sync(None, &format!("filter={filter}")).await;
    assert_eq!(first["rooms"]["join"][&room]["state"]["events"].as_array().map(Vec::len), Some(1), "{first}");
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let me = format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{}", urlencode(&alice.user_id));
    alice.ok(Method::PUT, &me, Some(&json!({ "membership": "join", "displayname": "Alice B." }))).await;
    let sent = alice.send_text(&room, "filtered out").await;
    let receipt = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{}", urlencode(&sent));
    alice.ok(Method::POST, &receipt, Some(&json!({}))).await;
    let next = alice.sync(Some(&since), &format!("timeout=0&filter={filter}")).await;
    assert!(next["rooms"]["join"].get(&room).is_none(), "nothing the filters let through: {next}");

    // Bob comes and goes between two syncs: the leave section holds the state at his leave.
    let since = bob.sync(None, "").await["next_batch"].as_str().unwrap().to_owned();
    bob.join(&room).await;
    bob.ok(Method::POST, &format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&json!({}))).await;
    let s = bob.sync(Some(&since), "timeout=0").await;
    let state = s["rooms"]["leave"][&room]["state"]["events"].as_array().cloned().unwrap_or_default();
    assert!(state.iter().any(|e| e["type"] == "a.test.state"), "{s}");
    assert!(state.iter().any(|e| e["type"] == "m.room.create"), "{s}");

    // A left room's timeline goes through the timeline filter too.
    let messages = urlencode(&json!({ "room": { "timeline": { "types": ["m.room.message"] } } }).to_string());
    let since = bob.sync(None, "").await["next_batch"].as_str().unwrap().to_owned();
    bob.join(&room).await;
    alice.send_text(&room, "avant le départ").await;
    bob.ok(Method::POST, &format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&json!({}))).await;
    let s = bob.sync(Some(&since), &format!("timeout=0&filter={messages}")).await;
    let timeline = s["rooms"]["leave"][&room]["timeline"]["events"].as_array().cloned().unwrap_or_default();
    let kinds: Vec<&str> = timeline.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["m.room.message"], "{s}");

    // History hidden from Bob (`joined`): he leaves, Carol joins, many messages follow, Bob
    // comes back. The state event of Carol's join still shows in his timeline, the messages
    // he may not read do not (as Synapse: clients read the state from the timeline).
    let carol = server.register("carol").await;
    set_history_visibility(&alice, &room, "joined").await;
    let since = bob.sync(None, "").await["next_batch"].as_str().unwrap().to_owned();
    carol.join(&room).await;
    for i in 0..30 {
        alice.send_text(&room, &format!("caché {i}")).await;
    }
    bob.join(&room).await;
    let s = bob.sync(Some(&since), "timeout=0").await;
    let timeline = s["rooms"]["join"][&room]["timeline"]["events"].as_array().cloned().unwrap_or_default();
    assert!(timeline.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == carol.user_id.as_str()), "{s}");
    assert!(timeline_bodies(&s, &room).iter().all(|b| !b.starts_with("caché")), "{s}");
}

fn peeked_bodies(sync: &Value, room: &str) -> Vec<String> {
    section_bodies(sync, "peek", room)
}

/// MSC2753: `POST /peek/{roomIdOrAlias}` on a world-readable room shows it in the peeking
/// device's `/sync` under `rooms.peek` (whole the first time, then what is new, waking a
/// waiting sync), on that device only, across a restart, until `unpeek` or a join.
async fn peeking_follows_a_world_readable_room_on_one_device(backend: Backend) {
    let mut server = TestServer::start(backend, &[]).await;
    let mut alice = server.register("alice").await;
    let mut bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat", "room_alias_name": "lecture" })).await;
    let alias = urlencode(&format!("#lecture:{}", alice.user_id.split_once(':').unwrap().1));
    let peek = |target: &str| format!("/_matrix/client/v3/peek/{target}");

    // Shared history (the default): members only.
    assert_error(&bob.post(&peek(&room), &json!({})).await, 403, "M_FORBIDDEN");
    assert_error(&bob.post(&peek("!nowhere:localhost"), &json!({})).await, 404, "M_NOT_FOUND");
    assert_error(&bob.post(&peek("not-a-room"), &json!({})).await, 400, "M_INVALID_PARAM");
    set_history_visibility(&alice, &room, "world_readable").await;
    alice.send_text(&room, "à lire").await;
    let since = bob.sync(None, "").await["next_batch"].as_str().unwrap().to_owned();
    let mut other_device = server.login("bob", "correct horse").await;
    let other_since = other_device.sync(None, "").await["next_batch"].as_str().unwrap().to_owned();

    let (status, body) = bob.post(&peek(&alias), &json!({})).await;
    assert_eq!((status, body["room_id"].as_str()), (200, Some(room.as_str())), "{body}");
    // The first sync after the peek: the whole room, its creation first, nothing joined.
    let first = bob.sync(Some(&since), "timeout=0").await;
    let events = first["rooms"]["peek"][&room]["timeline"]["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(events.first().map(|e| e["type"].clone()), Some(json!("m.room.create")), "{first}");
    assert_eq!(peeked_bodies(&first, &room), vec!["à lire"]);
    assert!(first["rooms"]["join"].as_object().unwrap().is_empty(), "{first}");
    let since = first["next_batch"].as_str().unwrap().to_owned();
    // Nothing new: the room is not named again.
    let quiet = bob.sync(Some(&since), "timeout=0").await;
    assert!(quiet["rooms"]["peek"].get(&room).is_none(), "{quiet}");

    // A new event wakes the peeking device's waiting sync.
    let woke = sync_woken_by_message(&bob, &since, &alice, &room, "nouvelle").await;
    assert_eq!(peeked_bodies(&woke, &room), vec!["nouvelle"]);
    let since = woke["next_batch"].as_str().unwrap().to_owned();
    // The peek is the device's: Bob's other device sees no such room.
    let elsewhere = other_device.sync(Some(&other_since), "timeout=0").await;
    assert!(elsewhere["rooms"].get("peek").is_none_or(|p| p.get(&room).is_none()), "{elsewhere}");
    assert!(elsewhere["rooms"]["join"].get(&room).is_none(), "{elsewhere}");

    // The peek outlives a restart.
    server.kill().await;
    server.launch().await;
    for c in [&mut alice, &mut bob, &mut other_device] {
        c.base = server.base.clone();
    }
    alice.send_text(&room, "après le redémarrage").await;
    let after = bob.sync(Some(&since), "timeout=0").await;
    assert_eq!(peeked_bodies(&after, &room), vec!["après le redémarrage"], "{after}");
    let since = after["next_batch"].as_str().unwrap().to_owned();

    // Unpeeked: nothing more comes.
    bob.ok(Method::POST, &format!("/_matrix/client/v3/rooms/{room}/unpeek"), Some(&json!({}))).await;
    alice.send_text(&room, "plus pour Bob").await;
    let gone = bob.sync(Some(&since), "timeout=0").await;
    assert!(gone["rooms"].get("peek").is_none_or(|p| p.get(&room).is_none()), "{gone}");
    let since = gone["next_batch"].as_str().unwrap().to_owned();

    // Peeking again, then joining: the room moves to `join`, and after a leave the peek does
    // not come back.
    bob.ok(Method::POST, &peek(&room), Some(&json!({}))).await;
    bob.join(&room).await;
    let joined = bob.sync(Some(&since), "timeout=0").await;
    assert!(joined["rooms"]["join"].get(&room).is_some(), "{joined}");
    assert!(joined["rooms"].get("peek").is_none_or(|p| p.get(&room).is_none()), "{joined}");
    bob.ok(Method::POST, &format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&json!({}))).await;
    let since = bob.sync(Some(joined["next_batch"].as_str().unwrap()), "timeout=0").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    alice.send_text(&room, "après le départ").await;
    let left = bob.sync(Some(&since), "timeout=0").await;
    assert!(left["rooms"].get("peek").is_none_or(|p| p.get(&room).is_none()), "{left}");

    // A room that stops being world readable can no longer be peeked into.
    set_history_visibility(&alice, &room, "joined").await;
    assert_error(&other_device.post(&peek(&room), &json!({})).await, 403, "M_FORBIDDEN");
}
