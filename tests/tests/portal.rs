//! The portal's rules, black box: clearances (NP, DR) of users and devices, classified rooms,
//! external persons, and their administration.

use diplomatie_tests::{assert_error, backend_tests, urlencode, Backend, Client, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

backend_tests!(
    users_without_dr_clearance_stay_out_of_dr_rooms,
    dr_rooms_take_only_encrypted_messages_from_approved_devices,
    a_classification_rises_but_never_falls_once_there_is_content,
    externals_only_enter_rooms_opened_to_them,
    clearances_are_administered_and_recorded,
    dr_rooms_are_shared_only_with_servers_on_the_allow_list,
);

const CLASSIFICATION: &str = "fr.diplomatie.classification";
const EXTERNALS: &str = "fr.diplomatie.externals";

async fn set_clearance(by: &Client, user: &Client, level: &str) -> (u16, Value) {
    let path = format!("/_diplomatie/admin/v1/users/{}/clearance", urlencode(&user.user_id));
    by.put(&path, &json!({ "clearance": level })).await
}

async fn approve_device(by: &Client, user: &Client, dr: bool) -> (u16, Value) {
    let path = format!(
        "/_diplomatie/admin/v1/users/{}/devices/{}/clearance",
        urlencode(&user.user_id),
        urlencode(&user.device_id)
    );
    by.put(&path, &json!({ "dr": dr })).await
}

fn classified(level: &str) -> Value {
    json!({ "type": CLASSIFICATION, "state_key": "", "content": { "level": level } })
}

fn forbidden_mentioning(resp: &(u16, Value), words: &str) {
    assert_error(resp, 403, "M_FORBIDDEN");
    let error = resp.1["error"].as_str().unwrap_or_default();
    assert!(error.contains(words), "the refusal says why ({words}): {error}");
}

async fn state(c: &Client, room: &str, kind: &str) -> (u16, Value) {
    c.get(&format!("/_matrix/client/v3/rooms/{room}/state/{kind}/")).await
}

async fn users_without_dr_clearance_stay_out_of_dr_rooms(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let root = server.admin().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    assert_eq!(set_clearance(&root, &alice, "DR").await.0, 200);

    // A DR room is encrypted from its creation, even when the request forgot it.
    let room = alice.create_room(json!({ "preset": "public_chat", "initial_state": [classified("DR")] })).await;
    let (status, encryption) = state(&alice, &room, "m.room.encryption").await;
    assert_eq!(status, 200);
    assert_eq!(encryption["algorithm"], "m.megolm.v1.aes-sha2");
    assert_eq!(state(&alice, &room, CLASSIFICATION).await.1["level"], "DR");

    // Bob has no DR clearance: no invite, no join (the room is public), no knock.
    forbidden_mentioning(&alice.invite(&room, &bob.user_id).await, "DR");
    forbidden_mentioning(&bob.join(&room).await, "DR");
    // Nor anyone invited by e-mail address (refused before any identity server is asked).
    let by_address =
        json!({ "id_server": "127.0.0.1:1", "id_access_token": "t", "medium": "email", "address": "x@example.org" });
    forbidden_mentioning(&alice.post(&format!("/_matrix/client/v3/rooms/{room}/invite"), &by_address).await, "DR");
    let knock_room = alice
        .create_room(json!({
            "initial_state": [
                classified("DR"),
                { "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } },
            ],
        }))
        .await;
    forbidden_mentioning(&bob.post(&format!("/_matrix/client/v3/knock/{knock_room}"), &json!({})).await, "knock");

    // Nor through a space whose members may join (restricted join rule).
    let space = alice.create_room(json!({ "preset": "public_chat", "creation_content": { "type": "m.space" } })).await;
    assert_eq!(bob.join(&space).await.0, 200);
    let restricted = alice
        .create_room(json!({
            "initial_state": [
                classified("DR"),
                { "type": "m.room.join_rules", "state_key": "", "content": {
                    "join_rule": "restricted",
                    "allow": [{ "type": "m.room_membership", "room_id": space }],
                } },
            ],
        }))
        .await;
    forbidden_mentioning(&bob.join(&restricted).await, "DR");
    // Nothing was written by the refusals: Bob is in none of the rooms.
    for r in [&room, &knock_room, &restricted] {
        let members = alice.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{r}/joined_members"), None).await;
        assert!(members["joined"].get(&bob.user_id).is_none());
    }

    // Nor peek into it (MSC2753), were its history world readable.
    let visibility = format!("/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility/");
    alice.ok(Method::PUT, &visibility, Some(&json!({ "history_visibility": "world_readable" }))).await;
    forbidden_mentioning(&bob.post(&format!("/_matrix/client/v3/peek/{room}"), &json!({})).await, "DR");

    // Cleared, he may.
    assert_eq!(set_clearance(&root, &bob, "DR").await.0, 200);
    assert_eq!(bob.join(&restricted).await.0, 200);
    assert_eq!(bob.join(&room).await.0, 200);

    // DR rooms are never listed in the directory.
    let (status, v) =
        alice.put(&format!("/_matrix/client/v3/directory/list/room/{room}"), &json!({ "visibility": "public" })).await;
    assert_error(&(status, v), 403, "M_FORBIDDEN");
    let (status, v) = alice
        .post("/_matrix/client/v3/createRoom", &json!({ "visibility": "public", "initial_state": [classified("DR")] }))
        .await;
    assert_error(&(status, v), 403, "M_FORBIDDEN");
    let listed = alice.ok(Method::GET, "/_matrix/client/v3/publicRooms", None).await;
    assert!(listed["chunk"].as_array().unwrap().iter().all(|r| r["room_id"] != room.as_str()));
}

async fn dr_rooms_take_only_encrypted_messages_from_approved_devices(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let root = server.admin().await;
    let alice = server.register("alice").await;
    assert_eq!(set_clearance(&root, &alice, "DR").await.0, 200);
    let room = alice.create_room(json!({ "initial_state": [classified("DR")] })).await;
    let send = |kind: &'static str, txn: &'static str, content: Value| {
        let alice = alice.clone();
        let room = room.clone();
        async move { alice.put(&format!("/_matrix/client/v3/rooms/{room}/send/{kind}/{txn}"), &content).await }
    };
    let encrypted = json!({
        "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgAEnAC", "device_id": alice.device_id,
        "sender_key": "abc", "session_id": "s1",
    });
    // The device is not approved for DR yet.
    forbidden_mentioning(&send("m.room.encrypted", "t1", encrypted.clone()).await, "device");
    assert_eq!(approve_device(&root, &alice, true).await.0, 200);
    assert_eq!(send("m.room.encrypted", "t2", encrypted.clone()).await.0, 200);
    // Clear messages never.
    forbidden_mentioning(
        &send("m.room.message", "t3", json!({ "msgtype": "m.text", "body": "en clair" })).await,
        "encrypted",
    );
    forbidden_mentioning(&send("m.reaction", "t4", json!({})).await, "encrypted");
    // An NP room takes anything from any device.
    let np = alice.create_room(json!({})).await;
    let (status, _) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{np}/send/m.room.message/t5"),
            &json!({ "msgtype": "m.text", "body": "ok" }),
        )
        .await;
    assert_eq!(status, 200);
}

async fn a_classification_rises_but_never_falls_once_there_is_content(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let root = server.admin().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    assert_eq!(set_clearance(&root, &alice, "DR").await.0, 200);
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&room).await.0, 200);
    let set = |who: &Client, level: &str| {
        let who = who.clone();
        let room = room.clone();
        let level = level.to_owned();
        async move {
            who.put(&format!("/_matrix/client/v3/rooms/{room}/state/{CLASSIFICATION}/"), &json!({ "level": level }))
                .await
        }
    };
    // Only a manager; only a known level; only an encrypted room; only cleared members.
    assert_error(&set(&bob, "DR").await, 403, "M_FORBIDDEN");
    assert_error(&set(&alice, "secret").await, 400, "M_BAD_JSON");
    forbidden_mentioning(&set(&alice, "DR").await, "encrypted");
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.encryption/"),
            Some(&json!({ "algorithm": "m.megolm.v1.aes-sha2" })),
        )
        .await;
    forbidden_mentioning(&set(&alice, "DR").await, &bob.user_id);
    bob.ok(Method::POST, &format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&json!({}))).await;
    assert_eq!(set(&alice, "DR").await.0, 200);
    // No message yet: a mistake may still be undone.
    assert_eq!(set(&alice, "NP").await.0, 200);
    assert_eq!(set(&alice, "DR").await.0, 200);
    assert_eq!(approve_device(&root, &alice, true).await.0, 200);
    let encrypted = json!({ "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x", "session_id": "s", "sender_key": "k", "device_id": alice.device_id });
    alice.ok(Method::PUT, &format!("/_matrix/client/v3/rooms/{room}/send/m.room.encrypted/e1"), Some(&encrypted)).await;
    forbidden_mentioning(&set(&alice, "NP").await, "lowered");
    assert_eq!(state(&alice, &room, CLASSIFICATION).await.1["level"], "DR");
}

async fn externals_only_enter_rooms_opened_to_them(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let root = server.admin().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let ngo = server.register("ngo").await;
    let path = format!("/_diplomatie/admin/v1/users/{}/kind", urlencode(&ngo.user_id));
    let (status, v) = root.put(&path, &json!({ "kind": "external" })).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["kind"], "external");
    assert_error(&root.put(&path, &json!({ "kind": "journalist" })).await, 400, "M_INVALID_PARAM");
    assert_error(&alice.put(&path, &json!({ "kind": "agent" })).await, 403, "M_FORBIDDEN");

    let internal = alice.create_room(json!({ "preset": "public_chat" })).await;
    forbidden_mentioning(&alice.invite(&internal, &ngo.user_id).await, "external");
    forbidden_mentioning(&ngo.join(&internal).await, "external");

    // Opened by a manager, the room takes them; a member who is no manager cannot open it.
    let open = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&open).await.0, 200);
    let opening = format!("/_matrix/client/v3/rooms/{open}/state/{EXTERNALS}/");
    assert_error(&bob.put(&opening, &json!({ "allowed": true })).await, 403, "M_FORBIDDEN");
    assert_eq!(alice.put(&opening, &json!({ "allowed": true })).await.0, 200);
    assert_eq!(ngo.join(&open).await.0, 200);

    // Never a DR room, even opened.
    assert_eq!(set_clearance(&root, &alice, "DR").await.0, 200);
    let dr = alice.create_room(json!({ "initial_state": [classified("DR")] })).await;
    forbidden_mentioning(
        &alice.put(&format!("/_matrix/client/v3/rooms/{dr}/state/{EXTERNALS}/"), &json!({ "allowed": true })).await,
        "DR",
    );
    forbidden_mentioning(&alice.invite(&dr, &ngo.user_id).await, "DR");
    // An external cannot be cleared DR.
    forbidden_mentioning(&set_clearance(&root, &ngo, "DR").await, "External");

    // The user directory: agents find everyone, the external only whom they share a room with.
    let carol = server.register("carol").await;
    let search = |c: &Client, term: &'static str| {
        let c = c.clone();
        async move {
            let v = c
                .ok(Method::POST, "/_matrix/client/v3/user_directory/search", Some(&json!({ "search_term": term })))
                .await;
            v["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["user_id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert!(search(&bob, "carol").await.contains(&carol.user_id));
    assert!(search(&ngo, "carol").await.is_empty());
    assert!(search(&ngo, "alice").await.contains(&alice.user_id));
}

async fn clearances_are_administered_and_recorded(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let root = server.admin().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;

    // Only administrators (or delegated managers of the user's group).
    forbidden_mentioning(&set_clearance(&alice, &bob, "DR").await, "administrator");
    assert_error(&set_clearance(&root, &bob, "TS").await, 400, "M_INVALID_PARAM");
    let (status, v) =
        root.put("/_diplomatie/admin/v1/users/%40ghost%3Alocalhost/clearance", &json!({ "clearance": "DR" })).await;
    assert_error(&(status, v), 404, "M_NOT_FOUND");
    assert_error(
        &root.put(&format!("/_diplomatie/admin/v1/users/{}/clearance", urlencode(&bob.user_id)), &json!({})).await,
        400,
        "M_MISSING_PARAM",
    );
    // A device is approved for DR only for a cleared user.
    forbidden_mentioning(&approve_device(&root, &bob, true).await, "DR");

    let (status, v) = set_clearance(&root, &bob, "DR").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["clearance"], "DR");
    assert_eq!(v["set_by"], root.user_id.as_str());
    assert!(v["set_ts"].as_i64().unwrap() > 0);
    let (status, device) = approve_device(&root, &bob, true).await;
    assert_eq!(status, 200, "{device}");
    assert_eq!(device["dr"], true);
    assert_eq!(device["set_by"], root.user_id.as_str());
    // Back to NP: the user leaves the DR rooms they were in, not the others.
    assert_eq!(set_clearance(&root, &alice, "DR").await.0, 200);
    let dr = alice.create_room(json!({ "preset": "public_chat", "initial_state": [classified("DR")] })).await;
    let np = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&dr).await.0, 200);
    assert_eq!(bob.join(&np).await.0, 200);
    let (status, _) = set_clearance(&root, &bob, "NP").await;
    assert_eq!(status, 200);
    let joined = bob.ok(Method::GET, "/_matrix/client/v3/joined_rooms", None).await;
    assert_eq!(joined["joined_rooms"], json!([np]));
    let report =
        root.ok(Method::GET, &format!("/_diplomatie/admin/v1/users/{}/clearance", urlencode(&bob.user_id)), None).await;
    assert_eq!(report["clearance"], "NP");
    let log: Vec<(&str, Option<&str>)> = report["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["level"].as_str().unwrap(), e["device_id"].as_str()))
        .collect();
    assert_eq!(log, vec![("DR", None), ("DR", Some(bob.device_id.as_str())), ("NP", None)]);
    assert_error(
        &alice.get(&format!("/_diplomatie/admin/v1/users/{}/clearance", urlencode(&bob.user_id))).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &server.client().get(&format!("/_diplomatie/admin/v1/users/{}/clearance", urlencode(&bob.user_id))).await,
        401,
        "M_MISSING_TOKEN",
    );
}

async fn dr_rooms_are_shared_only_with_servers_on_the_allow_list(backend: Backend) {
    let server = TestServer::start(backend, &[("PORTAL__DR_FEDERATION_ALLOWLIST", "[\"partner.example\"]")]).await;
    let root = server.admin().await;
    let alice = server.register("alice").await;
    assert_eq!(set_clearance(&root, &alice, "DR").await.0, 200);
    let dr = alice
        .create_room(
            json!({ "initial_state": [{ "type": CLASSIFICATION, "state_key": "", "content": { "level": "DR" } }] }),
        )
        .await;
    let np = alice.create_room(json!({})).await;
    // A server off the allow-list: the DR rule refuses, with its reason.
    let (status, v) = alice.invite(&dr, "@agent:elsewhere.example").await;
    assert_eq!((status, v["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{v}");
    assert!(v["error"].as_str().unwrap().contains("not shared with that server"), "{v}");
    // On the allow-list, or an NP room: the rule lets it through (to federation, which this
    // server has not enabled, and says so).
    for (room, user) in [(&dr, "@agent:partner.example"), (&np, "@agent:elsewhere.example")] {
        let (status, v) = alice.invite(room, user).await;
        assert_eq!(status, 403, "{v}");
        assert!(v["error"].as_str().unwrap().contains("Federation is disabled"), "{v}");
    }
}
