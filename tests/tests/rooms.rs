//! Rooms: creation, membership, state, aliases and the directories (client-server spec,
//! "Rooms", "Room Membership", "Room Directory", "User Directory").

use diplomatie_tests::{assert_error, backend_tests, urlencode, Backend, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

backend_tests!(
    create_room_applies_presets_and_options,
    create_room_checks_its_input,
    every_advertised_room_version_creates_rooms,
    invite_join_leave_and_forget,
    kick_ban_and_unban,
    knocking_and_restricted_joins,
    state_is_read_and_written_with_power_levels,
    aliases_resolve_and_belong_to_their_creator,
    public_directory_searches_and_paginates,
    user_directory_finds_users,
    user_directory_follows_rooms_unless_searching_all,
    upgrades_replace_rooms_and_carry_their_state,
    guest_and_legacy_endpoints,
    reports_reach_administrators_and_moderators,
    presence_of_newcomers_comes_with_their_join,
);

async fn state(c: &diplomatie_tests::Client, room: &str, kind: &str, key: &str) -> Value {
    c.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/state/{kind}/{key}"), None).await
}

async fn create_room_applies_presets_and_options(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    server.register("bob").await;
    let room = alice
        .create_room(json!({
            "preset": "trusted_private_chat",
            "name": "Cellule de crise",
            "topic": "Suivi",
            "room_alias_name": "crise",
            "invite": ["@bob:localhost"],
            "initial_state": [{ "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "invited" } }],
            "power_level_content_override": { "events_default": 10 },
            "creation_content": { "m.federate": false },
        }))
        .await;
    assert_eq!(state(&alice, &room, "m.room.name", "").await["name"], "Cellule de crise");
    assert_eq!(state(&alice, &room, "m.room.topic", "").await["topic"], "Suivi");
    assert_eq!(state(&alice, &room, "m.room.join_rules", "").await["join_rule"], "invite");
    assert_eq!(state(&alice, &room, "m.room.history_visibility", "").await["history_visibility"], "invited");
    assert_eq!(state(&alice, &room, "m.room.canonical_alias", "").await["alias"], "#crise:localhost");
    assert_eq!(state(&alice, &room, "m.room.create", "").await["m.federate"], false);
    let pl = state(&alice, &room, "m.room.power_levels", "").await;
    assert_eq!(pl["events_default"], 10);
    // trusted_private_chat: invitees get the creator's power. v12 creators are implicit.
    assert_eq!(pl["users"]["@bob:localhost"], 100);
    assert_eq!(state(&alice, &room, "m.room.member", "@bob:localhost").await["membership"], "invite");
    // The default room version is the spec's recommendation.
    let caps = alice.ok(Method::GET, "/_matrix/client/v3/capabilities", None).await;
    assert_eq!(caps["capabilities"]["m.room_versions"]["default"], "12");
    assert_eq!(state(&alice, &room, "m.room.create", "").await["room_version"], "12");
    let alias = alice.ok(Method::GET, "/_matrix/client/v3/directory/room/%23crise:localhost", None).await;
    assert_eq!(alias["room_id"], room.as_str());
    // A public chat is public and published when asked.
    let public = alice.create_room(json!({ "visibility": "public", "name": "Agora" })).await;
    assert_eq!(state(&alice, &public, "m.room.join_rules", "").await["join_rule"], "public");
    let vis = alice.ok(Method::GET, &format!("/_matrix/client/v3/directory/list/room/{public}"), None).await;
    assert_eq!(vis["visibility"], "public");
}

async fn create_room_checks_its_input(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    alice.create_room(json!({ "room_alias_name": "pris" })).await;
    assert_error(
        &alice.post("/_matrix/client/v3/createRoom", &json!({ "room_alias_name": "pris" })).await,
        400,
        "M_ROOM_IN_USE",
    );
    assert_error(
        &alice.post("/_matrix/client/v3/createRoom", &json!({ "room_version": "99" })).await,
        400,
        "M_UNSUPPORTED_ROOM_VERSION",
    );
    assert_error(&alice.post("/_matrix/client/v3/createRoom", &json!({ "preset": "nope" })).await, 400, "M_BAD_JSON");
    assert_error(&alice.post("/_matrix/client/v3/createRoom", &json!({ "name": 12 })).await, 400, "M_BAD_JSON");
    // A power level override that strips the creator's power is refused by the auth rules.
    let rooms_before =
        alice.ok(Method::GET, "/_matrix/client/v3/joined_rooms", None).await["joined_rooms"].as_array().unwrap().len();
    let bad_power =
        json!({ "room_version": "10", "power_level_content_override": { "users": { "@alice:localhost": "high" } } });
    assert_error(&alice.post("/_matrix/client/v3/createRoom", &bad_power).await, 400, "M_INVALID_ROOM_STATE");
    let bad_state = json!({ "room_version": "10", "initial_state": [
        { "type": "m.room.power_levels", "state_key": "", "content": { "users": {} } },
        { "type": "m.room.name", "state_key": "", "content": { "name": "x" } },
    ] });
    assert_error(&alice.post("/_matrix/client/v3/createRoom", &bad_state).await, 400, "M_INVALID_ROOM_STATE");
    // Nothing of the refused rooms remains: no half-created room.
    let rooms_after =
        alice.ok(Method::GET, "/_matrix/client/v3/joined_rooms", None).await["joined_rooms"].as_array().unwrap().len();
    assert_eq!(rooms_after, rooms_before);
}

async fn every_advertised_room_version_creates_rooms(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let caps = alice.ok(Method::GET, "/_matrix/client/v3/capabilities", None).await;
    let versions: Vec<String> =
        caps["capabilities"]["m.room_versions"]["available"].as_object().unwrap().keys().cloned().collect();
    for v in ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"] {
        assert!(versions.contains(&v.to_owned()), "version {v} is advertised");
        let room =
            alice.create_room(json!({ "room_version": v, "preset": "public_chat", "name": format!("v{v}") })).await;
        assert_eq!(bob.join(&room).await.0, 200, "join v{v}");
        let id = bob.send_text(&room, &format!("message in v{v}")).await;
        let ev =
            alice.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/event/{}", urlencode(&id)), None).await;
        assert_eq!(ev["content"]["body"], format!("message in v{v}"));
        // Redaction follows the version's algorithm.
        alice
            .ok(
                Method::PUT,
                &format!("/_matrix/client/v3/rooms/{room}/redact/{}/r{v}", urlencode(&id)),
                Some(&json!({ "reason": "test" })),
            )
            .await;
        let ev =
            alice.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/event/{}", urlencode(&id)), None).await;
        assert_eq!(ev["content"], json!({}), "redacted in v{v}");
    }
}

async fn invite_join_leave_and_forget(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "name": "Privée" })).await;
    // Not invited: refused.
    assert_error(&bob.join(&room).await, 403, "M_FORBIDDEN");
    assert_error(&bob.invite(&room, "@alice:localhost").await, 403, "M_FORBIDDEN");
    assert_error(&alice.invite(&room, "@nobody:localhost").await, 404, "M_NOT_FOUND");
    assert_eq!(alice.invite(&room, "@bob:localhost").await.0, 200);
    let (status, v) = bob.post(&format!("/_matrix/client/v3/rooms/{room}/join"), &json!({ "reason": "hello" })).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["room_id"], room.as_str());
    // The rooms they share (MSC2666, spec 1.19), stable and unstable; not with oneself.
    alice.create_room(json!({ "name": "Sans Bob" })).await;
    let mutual = alice.ok(Method::GET, "/_matrix/client/v1/mutual_rooms?user_id=%40bob%3Alocalhost", None).await;
    assert_eq!(mutual, json!({ "count": 1, "joined": [room] }));
    let path = "/_matrix/client/unstable/uk.half-shot.msc2666/user/mutual_rooms?user_id=%40alice%3Alocalhost";
    assert_eq!(bob.ok(Method::GET, path, None).await["joined"], json!([room]));
    let myself = alice.get("/_matrix/client/v1/mutual_rooms?user_id=%40alice%3Alocalhost").await;
    assert_error(&myself, 400, "M_INVALID_PARAM");
    let nobody = alice.ok(Method::GET, "/_matrix/client/v1/mutual_rooms?user_id=%40nobody%3Alocalhost", None).await;
    assert_eq!(nobody["count"], 0);
    let joined = alice.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/joined_members"), None).await;
    assert_eq!(joined["joined"].as_object().unwrap().len(), 2);
    assert_eq!(joined["joined"]["@bob:localhost"]["display_name"], "bob");
    // An unset avatar is said, as `null` (Synapse's answer, which clients read).
    assert_eq!(joined["joined"]["@bob:localhost"].get("avatar_url"), Some(&Value::Null), "{joined}");
    let rooms = bob.ok(Method::GET, "/_matrix/client/v3/joined_rooms", None).await;
    assert_eq!(rooms["joined_rooms"], json!([room]));
    // Forgetting requires leaving first.
    assert_error(&bob.post(&format!("/_matrix/client/v3/rooms/{room}/forget"), &json!({})).await, 400, "M_UNKNOWN");
    bob.ok(Method::POST, &format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&json!({}))).await;
    assert_eq!(state(&alice, &room, "m.room.member", "@bob:localhost").await["membership"], "leave");
    bob.ok(Method::POST, &format!("/_matrix/client/v3/rooms/{room}/forget"), Some(&json!({}))).await;
    let members =
        alice.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/members?membership=join"), None).await;
    assert_eq!(members["chunk"].as_array().unwrap().len(), 1);
    let left =
        alice.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/members?not_membership=join"), None).await;
    assert_eq!(left["chunk"][0]["state_key"], "@bob:localhost");
    // Rejecting an invite is a leave.
    let other = alice.create_room(json!({ "invite": ["@bob:localhost"] })).await;
    bob.ok(Method::POST, &format!("/_matrix/client/v3/rooms/{other}/leave"), Some(&json!({}))).await;
    assert_eq!(state(&alice, &other, "m.room.member", "@bob:localhost").await["membership"], "leave");
    assert_error(&bob.join("!unknown:localhost").await, 404, "M_NOT_FOUND");
}

async fn kick_ban_and_unban(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    carol.join(&room).await;
    // Without power, kicking is refused.
    assert_error(
        &bob.post(&format!("/_matrix/client/v3/rooms/{room}/kick"), &json!({ "user_id": "@carol:localhost" })).await,
        403,
        "M_FORBIDDEN",
    );
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/kick"),
            Some(&json!({ "user_id": "@carol:localhost", "reason": "rappel" })),
        )
        .await;
    let m = state(&alice, &room, "m.room.member", "@carol:localhost").await;
    assert_eq!((m["membership"].clone(), m["reason"].clone()), (json!("leave"), json!("rappel")));
    assert_eq!(carol.join(&room).await.0, 200);
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/ban"),
            Some(&json!({ "user_id": "@carol:localhost" })),
        )
        .await;
    assert_error(&carol.join(&room).await, 403, "M_FORBIDDEN");
    assert_error(&carol.send_raw(&room).await, 403, "M_FORBIDDEN");
    // A banned user reads the room no more (one who left reads it as it was then).
    let own = format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/@carol:localhost");
    assert_error(&carol.get(&own).await, 403, "M_FORBIDDEN");
    assert_error(&carol.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b")).await, 403, "M_FORBIDDEN");
    // Kicking a banned user is no way to unban them.
    let kick = json!({ "user_id": "@carol:localhost" });
    assert_error(&alice.post(&format!("/_matrix/client/v3/rooms/{room}/kick"), &kick).await, 403, "M_FORBIDDEN");
    assert_eq!(state(&alice, &room, "m.room.member", "@carol:localhost").await["membership"], "ban");
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/unban"),
            Some(&json!({ "user_id": "@carol:localhost" })),
        )
        .await;
    assert_eq!(carol.join(&room).await.0, 200);
    assert_error(
        &alice.post(&format!("/_matrix/client/v3/rooms/{room}/unban"), &json!({ "user_id": "@bob:localhost" })).await,
        403,
        "M_FORBIDDEN",
    );

    // The same through the state endpoint, as Synapse takes it: a ban (of a user of another
    // server too), an unban, a kick, an invite, each with the same checks.
    let member = |who: &str| format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{who}");
    let (status, banned) = alice.put(&member("@carol:localhost"), &json!({ "membership": "ban", "reason": "r" })).await;
    assert_eq!(status, 200, "{banned}");
    let m = state(&alice, &room, "m.room.member", "@carol:localhost").await;
    assert_eq!((m["membership"].clone(), m["reason"].clone()), (json!("ban"), json!("r")));
    assert_error(&carol.join(&room).await, 403, "M_FORBIDDEN");
    alice.ok(Method::PUT, &member("@bob:elsewhere.example"), Some(&json!({ "membership": "ban" }))).await;
    assert_eq!(state(&alice, &room, "m.room.member", "@bob:elsewhere.example").await["membership"], "ban");
    alice.ok(Method::PUT, &member("@carol:localhost"), Some(&json!({ "membership": "leave" }))).await;
    assert_eq!(carol.join(&room).await.0, 200);
    // Without power, refused; a kick; an invite of one who left.
    assert_error(&bob.put(&member("@carol:localhost"), &json!({ "membership": "leave" })).await, 403, "M_FORBIDDEN");
    alice.ok(Method::PUT, &member("@carol:localhost"), Some(&json!({ "membership": "leave" }))).await;
    assert_eq!(state(&alice, &room, "m.room.member", "@carol:localhost").await["membership"], "leave");
    alice.ok(Method::PUT, &member("@carol:localhost"), Some(&json!({ "membership": "invite" }))).await;
    assert_eq!(state(&alice, &room, "m.room.member", "@carol:localhost").await["membership"], "invite");
    // Joining someone else, a member event without membership, a state key that is no user.
    assert_error(&alice.put(&member("@bob:localhost"), &json!({ "membership": "join" })).await, 403, "M_FORBIDDEN");
    assert_error(&alice.put(&member("@bob:localhost"), &json!({ "displayname": "B" })).await, 400, "M_BAD_JSON");
    assert_error(&alice.put(&member("not-a-user"), &json!({ "membership": "ban" })).await, 400, "M_INVALID_PARAM");
    assert_eq!(state(&alice, &room, "m.room.member", "@bob:localhost").await["membership"], "join");
}

trait SendRaw {
    async fn send_raw(&self, room: &str) -> (u16, Value);
}

impl SendRaw for diplomatie_tests::Client {
    async fn send_raw(&self, room: &str) -> (u16, Value) {
        self.put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/x1"),
            &json!({ "msgtype": "m.text", "body": "x" }),
        )
        .await
    }
}

async fn knocking_and_restricted_joins(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    // Knocking: allowed where the join rule says so; the knocker can then be invited.
    let room = alice.create_room(json!({ "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }] })).await;
    let (status, v) =
        bob.post(&format!("/_matrix/client/v3/knock/{room}"), &json!({ "reason": "Affecté à la direction" })).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(state(&alice, &room, "m.room.member", "@bob:localhost").await["membership"], "knock");
    assert_eq!(alice.invite(&room, "@bob:localhost").await.0, 200);
    assert_eq!(bob.join(&room).await.0, 200);
    let closed = alice.create_room(json!({})).await;
    assert_error(&carol.post(&format!("/_matrix/client/v3/knock/{closed}"), &json!({})).await, 403, "M_FORBIDDEN");
    // Restricted: members of the space may join; others may not.
    let space = alice.create_room(json!({ "preset": "public_chat", "creation_content": { "type": "m.space" } })).await;
    let restricted = alice
        .create_room(json!({ "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "restricted", "allow": [{ "type": "m.room_membership", "room_id": space }] } }] }))
        .await;
    assert_error(&carol.join(&restricted).await, 403, "M_FORBIDDEN");
    assert_eq!(carol.join(&space).await.0, 200);
    assert_eq!(carol.join(&restricted).await.0, 200);
    let m = state(&alice, &restricted, "m.room.member", "@carol:localhost").await;
    assert_eq!(m["join_authorised_via_users_server"], "@alice:localhost");
}

async fn state_is_read_and_written_with_power_levels(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    alice
        .ok(Method::PUT, &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name"), Some(&json!({ "name": "Nom" })))
        .await;
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{room}/state/org.example.custom/clé"),
            Some(&json!({ "v": 1 })),
        )
        .await;
    assert_eq!(state(&bob, &room, "org.example.custom", "clé").await["v"], 1);
    assert_error(
        &bob.put(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"), &json!({ "name": "Pirate" })).await,
        403,
        "M_FORBIDDEN",
    );
    assert_eq!(state(&bob, &room, "m.room.name", "").await["name"], "Nom");
    let all = bob.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/state"), None).await;
    assert!(all.as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"));
    assert_error(&bob.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.avatar/")).await, 404, "M_NOT_FOUND");
    // Encryption, once on, stays on.
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.encryption/"),
            Some(&json!({ "algorithm": "m.megolm.v1.aes-sha2" })),
        )
        .await;
    assert_error(
        &alice
            .put(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.encryption/"), &json!({ "algorithm": "none" }))
            .await,
        403,
        "M_FORBIDDEN",
    );
    // Outsiders read nothing.
    let carol = server.register("carol").await;
    let private = alice.create_room(json!({})).await;
    assert_error(&carol.get(&format!("/_matrix/client/v3/rooms/{private}/state")).await, 403, "M_FORBIDDEN");
    // A canonical alias must point at the room.
    assert_error(
        &alice
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/state/m.room.canonical_alias/"),
                &json!({ "alias": "#nowhere:localhost" }),
            )
            .await,
        400,
        "M_BAD_ALIAS",
    );
}

async fn aliases_resolve_and_belong_to_their_creator(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    alice
        .ok(Method::PUT, "/_matrix/client/v3/directory/room/%23dgm:localhost", Some(&json!({ "room_id": room })))
        .await;
    // An alias taken: the spec's 409 Conflict (with M_UNKNOWN).
    assert_error(
        &alice.put("/_matrix/client/v3/directory/room/%23dgm:localhost", &json!({ "room_id": room })).await,
        409,
        "M_UNKNOWN",
    );
    let (status, _) = bob.join("#dgm:localhost").await;
    assert_eq!(status, 200);
    let aliases = bob.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/aliases"), None).await;
    assert_eq!(aliases["aliases"], json!(["#dgm:localhost"]));
    assert_error(&bob.delete("/_matrix/client/v3/directory/room/%23dgm:localhost").await, 403, "M_FORBIDDEN");
    // The canonical alias event names it; deleting the alias takes it out of that event too.
    alice
        .ok(Method::PUT, "/_matrix/client/v3/directory/room/%23dgm-bis:localhost", Some(&json!({ "room_id": room })))
        .await;
    let canonical = format!("/_matrix/client/v3/rooms/{room}/state/m.room.canonical_alias/");
    let content = json!({ "alias": "#dgm:localhost", "alt_aliases": ["#dgm-bis:localhost"] });
    alice.ok(Method::PUT, &canonical, Some(&content)).await;
    alice.ok(Method::DELETE, "/_matrix/client/v3/directory/room/%23dgm:localhost", None).await;
    assert_error(&bob.get("/_matrix/client/v3/directory/room/%23dgm:localhost").await, 404, "M_NOT_FOUND");
    assert_eq!(alice.ok(Method::GET, &canonical, None).await, json!({ "alt_aliases": ["#dgm-bis:localhost"] }));
    alice.ok(Method::DELETE, "/_matrix/client/v3/directory/room/%23dgm-bis:localhost", None).await;
    assert_eq!(alice.ok(Method::GET, &canonical, None).await, json!({ "alt_aliases": [] }));
    assert_error(&bob.get("/_matrix/client/v3/directory/room/notanalias").await, 400, "M_INVALID_PARAM");
}

async fn public_directory_searches_and_paginates(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    for i in 0..5 {
        alice.create_room(json!({ "visibility": "public", "preset": "public_chat", "name": format!("Communauté {i}"), "topic": if i == 3 { "Sahel" } else { "autre" } })).await;
    }
    let private = alice.create_room(json!({ "name": "Secret" })).await;
    let c = server.client();
    let page1 = c.ok(Method::GET, "/_matrix/client/v3/publicRooms?limit=2", None).await;
    assert_eq!(page1["chunk"].as_array().unwrap().len(), 2);
    assert_eq!(page1["total_room_count_estimate"], 5);
    let next = page1["next_batch"].as_str().unwrap();
    let page2 = c.ok(Method::GET, &format!("/_matrix/client/v3/publicRooms?limit=2&since={next}"), None).await;
    assert_eq!(page2["chunk"].as_array().unwrap().len(), 2);
    assert_ne!(page1["chunk"][0]["room_id"], page2["chunk"][0]["room_id"]);
    let found = alice
        .ok(
            Method::POST,
            "/_matrix/client/v3/publicRooms",
            Some(&json!({ "filter": { "generic_search_term": "sahel" } })),
        )
        .await;
    assert_eq!(found["chunk"].as_array().unwrap().len(), 1);
    assert_eq!(found["chunk"][0]["name"], "Communauté 3");
    assert_eq!(found["chunk"][0]["num_joined_members"], 1);
    // Publishing needs power in the room; then the room appears.
    let bob = server.register("bob").await;
    assert_error(
        &bob.put(&format!("/_matrix/client/v3/directory/list/room/{private}"), &json!({ "visibility": "public" }))
            .await,
        403,
        "M_FORBIDDEN",
    );
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/directory/list/room/{private}"),
            Some(&json!({ "visibility": "public" })),
        )
        .await;
    let all = c.ok(Method::GET, "/_matrix/client/v3/publicRooms", None).await;
    assert_eq!(all["chunk"].as_array().unwrap().len(), 6);
    assert_error(&c.get("/_matrix/client/v3/publicRooms?since=garbage").await, 400, "M_INVALID_PARAM");
}

async fn user_directory_finds_users(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    server.register("ambassadeur").await;
    server.register("consul").await;
    let res = alice
        .ok(Method::POST, "/_matrix/client/v3/user_directory/search", Some(&json!({ "search_term": "amba" })))
        .await;
    assert_eq!(res["results"].as_array().unwrap().len(), 1);
    assert_eq!(res["results"][0]["user_id"], "@ambassadeur:localhost");
    let res = alice
        .ok(Method::POST, "/_matrix/client/v3/user_directory/search", Some(&json!({ "search_term": "", "limit": 2 })))
        .await;
    assert_eq!(res["limited"], true);
    assert_error(&alice.post("/_matrix/client/v3/user_directory/search", &json!({})).await, 400, "M_MISSING_PARAM");
}

/// With `search_all_users` off (Synapse's default), a user finds the members of the rooms they
/// are in and of the public rooms (joinable by anyone, or world-readable) someone of the server
/// is in; nobody else, and nobody once they left.
async fn user_directory_follows_rooms_unless_searching_all(backend: Backend) {
    let server = TestServer::start(backend, &[("USER_DIRECTORY__SEARCH_ALL_USERS", "false")]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let dave = server.register("dave").await;
    // Bob's private room: unseen until Alice is in it too.
    let private = bob.create_room(json!({ "preset": "private_chat", "invite": [alice.user_id] })).await;
    // Nobody yet: Alice is only invited.
    let search = |term: &'static str| {
        let alice = &alice;
        async move {
            let res = alice
                .ok(Method::POST, "/_matrix/client/v3/user_directory/search", Some(&json!({ "search_term": term })))
                .await;
            res["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["user_id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert!(search("").await.is_empty());
    alice.join(&private).await;
    assert_eq!(search("bob").await, vec![bob.user_id.to_string()]);
    // As in Synapse, sharing a private room with oneself does not list oneself.
    assert!(search("alice").await.is_empty());
    // Carol's public room: seen without joining it; no longer once it is invite-only, again
    // once it is world-readable.
    let public = carol.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(search("carol").await, vec![carol.user_id.to_string()]);
    let set = |kind: &'static str, content: Value| {
        let carol = &carol;
        let public = &public;
        async move {
            carol.ok(Method::PUT, &format!("/_matrix/client/v3/rooms/{public}/state/{kind}/"), Some(&content)).await
        }
    };
    set("m.room.join_rules", json!({ "join_rule": "invite" })).await;
    assert!(search("carol").await.is_empty());
    set("m.room.history_visibility", json!({ "history_visibility": "world_readable" })).await;
    assert_eq!(search("carol").await, vec![carol.user_id.to_string()]);
    // A display name is searched as well; Dave, in no room, stays unfound.
    carol
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/profile/{}/displayname", carol.user_id),
            Some(&json!({ "displayname": "Consule Générale" })),
        )
        .await;
    let res = alice
        .ok(Method::POST, "/_matrix/client/v3/user_directory/search", Some(&json!({ "search_term": "consule" })))
        .await;
    assert_eq!(res["results"][0]["display_name"], "Consule Générale", "{res}");
    assert!(search("dave").await.is_empty());
    assert_eq!(dave.user_id.as_str(), "@dave:localhost");
    // Bob leaves: gone.
    bob.ok(Method::POST, &format!("/_matrix/client/v3/rooms/{private}/leave"), Some(&json!({}))).await;
    assert!(search("bob").await.is_empty());
}

mod same_millisecond {
    use super::*;

    /// v12 room ids are create-event hashes: rooms created at once with the same options must
    /// still get distinct ids.
    async fn identical_rooms_created_at_once_are_distinct(backend: Backend) {
        let server = TestServer::start(backend, &[]).await;
        let alice = server.register("alice").await;
        let body = json!({ "preset": "public_chat" });
        let creations = (0..8).map(|_| alice.post("/_matrix/client/v3/createRoom", &body));
        let results = futures::future::join_all(creations).await;
        let mut ids: Vec<String> = results
            .into_iter()
            .map(|(status, v)| {
                assert_eq!(status, 200, "{v}");
                v["room_id"].as_str().unwrap().to_owned()
            })
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 8);
    }

    backend_tests!(identical_rooms_created_at_once_are_distinct);
}

async fn upgrades_replace_rooms_and_carry_their_state(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let eve = server.register("eve").await;
    let old = alice
        .create_room(json!({
            "room_version": "10",
            "preset": "public_chat",
            "visibility": "public",
            "name": "Veille",
            "room_alias_name": "veille",
            "creation_content": { "m.federate": false },
            "initial_state": [{ "type": "fr.diplomatie.classification", "state_key": "", "content": { "level": "NP" } }],
        }))
        .await;
    bob.join(&old).await;
    eve.join(&old).await;
    alice
        .ok(Method::POST, &format!("/_matrix/client/v3/rooms/{old}/ban"), Some(&json!({ "user_id": eve.user_id })))
        .await;
    // Bob's rule, tags and m.direct entry for the old room.
    bob.ok(
        Method::PUT,
        &format!("/_matrix/client/v3/pushrules/global/room/{}", urlencode(&old)),
        Some(&json!({ "actions": ["notify"] })),
    )
    .await;
    bob.ok(
        Method::PUT,
        &format!("/_matrix/client/v3/user/{}/rooms/{old}/tags/u.travail", bob.user_id),
        Some(&json!({})),
    )
    .await;
    bob.ok(
        Method::PUT,
        &format!("/_matrix/client/v3/user/{}/account_data/m.direct", bob.user_id),
        Some(&json!({ alice.user_id.clone(): [old] })),
    )
    .await;

    let upgrade = format!("/_matrix/client/v3/rooms/{old}/upgrade");
    // Refused: an unknown version, a member without the power, a room that does not exist.
    assert_error(&alice.post(&upgrade, &json!({ "new_version": "nope" })).await, 400, "M_UNSUPPORTED_ROOM_VERSION");
    assert_error(
        &alice.post(&upgrade, &json!({ "new_version": "my_bad_version" })).await,
        400,
        "M_UNSUPPORTED_ROOM_VERSION",
    );
    assert_error(&bob.post(&upgrade, &json!({ "new_version": "11" })).await, 403, "M_FORBIDDEN");
    let bogus = "/_matrix/client/v3/rooms/!nowhere:localhost/upgrade";
    assert_error(&alice.post(bogus, &json!({ "new_version": "11" })).await, 404, "M_NOT_FOUND");
    // Nothing was written by the refusals.
    let (status, _) = alice.get(&format!("/_matrix/client/v3/rooms/{old}/state/m.room.tombstone/")).await;
    assert_eq!(status, 404);

    let new = alice.ok(Method::POST, &upgrade, Some(&json!({ "new_version": "11" }))).await["replacement_room"]
        .as_str()
        .unwrap()
        .to_owned();
    let tombstone = state(&alice, &old, "m.room.tombstone", "").await;
    assert_eq!(tombstone["replacement_room"], new);
    let create =
        alice.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{new}/state/m.room.create/?format=event"), None).await;
    assert_eq!(create["content"]["room_version"], "11");
    assert_eq!(create["content"]["predecessor"]["room_id"], old);
    assert_eq!(create["content"]["m.federate"], false);
    // State, the classification and the ban carried over; the alias and the listing moved.
    assert_eq!(state(&alice, &new, "m.room.name", "").await["name"], "Veille");
    assert_eq!(state(&alice, &new, "fr.diplomatie.classification", "").await["level"], "NP");
    assert_eq!(state(&alice, &new, "m.room.join_rules", "").await["join_rule"], "public");
    assert_eq!(state(&alice, &new, "m.room.member", &eve.user_id).await["membership"], "ban");
    let alias = alice.ok(Method::GET, "/_matrix/client/v3/directory/room/%23veille:localhost", None).await;
    assert_eq!(alias["room_id"], new);
    let listed = alice.ok(Method::GET, &format!("/_matrix/client/v3/directory/list/room/{new}"), None).await;
    assert_eq!(listed["visibility"], "public");
    let listed = alice.ok(Method::GET, &format!("/_matrix/client/v3/directory/list/room/{old}"), None).await;
    assert_eq!(listed["visibility"], "private");
    assert_eq!(state(&alice, &old, "m.room.canonical_alias", "").await, json!({}));
    assert_eq!(state(&alice, &new, "m.room.canonical_alias", "").await["alias"], "#veille:localhost");
    // The old room: only moderators may speak.
    let levels = state(&alice, &old, "m.room.power_levels", "").await;
    assert_eq!((levels["events_default"].clone(), levels["invite"].clone()), (json!(50), json!(50)));
    let (status, _) = bob
        .put(
            &format!("/_matrix/client/v3/rooms/{old}/send/m.room.message/late"),
            &json!({ "msgtype": "m.text", "body": "trop tard" }),
        )
        .await;
    assert_eq!(status, 403);
    // Bob joins the new room: his settings follow him.
    bob.join(&new).await;
    let rule =
        bob.ok(Method::GET, &format!("/_matrix/client/v3/pushrules/global/room/{}", urlencode(&new)), None).await;
    assert_eq!(rule["actions"], json!(["notify"]));
    let tags = bob.ok(Method::GET, &format!("/_matrix/client/v3/user/{}/rooms/{new}/tags", bob.user_id), None).await;
    assert!(tags["tags"].get("u.travail").is_some(), "{tags}");
    let direct =
        bob.ok(Method::GET, &format!("/_matrix/client/v3/user/{}/account_data/m.direct", bob.user_id), None).await;
    assert_eq!(direct[&alice.user_id], json!([old, new]));
    // A tombstone naming its own room is refused.
    let (status, v) = alice
        .put(&format!("/_matrix/client/v3/rooms/{new}/state/m.room.tombstone/"), &json!({ "replacement_room": new }))
        .await;
    assert_eq!((status, v["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{v}");
}

async fn guest_and_legacy_endpoints(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({ "name": "Ancien" })).await;
    let first = alice.send_text(&room, "un").await;
    // /initialSync: the room with its messages and state.
    let init = alice.ok(Method::GET, "/_matrix/client/v3/initialSync?limit=5", None).await;
    let entry = init["rooms"].as_array().unwrap().iter().find(|r| r["room_id"] == room).unwrap().clone();
    assert_eq!(entry["membership"], "join");
    assert!(entry["messages"]["chunk"].as_array().unwrap().iter().any(|e| e["event_id"] == first), "{entry}");
    assert!(entry["state"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.name"), "{entry}");
    // The old shapes: events name their sender as `user_id`, presence its user in its content,
    // the caller's own included; the push rules are not account data there.
    let message = entry["messages"]["chunk"].as_array().unwrap().iter().find(|e| e["event_id"] == first).unwrap();
    assert_eq!(message["user_id"], alice.user_id);
    let presence = init["presence"].as_array().unwrap();
    assert!(presence.iter().any(|p| p["content"]["user_id"] == alice.user_id), "{init}");
    assert!(!init["account_data"].as_array().unwrap().iter().any(|e| e["type"] == "m.push_rules"), "{init}");
    let none = alice.ok(Method::GET, "/_matrix/client/v3/initialSync?limit=0", None).await;
    let entry = none["rooms"].as_array().unwrap().iter().find(|r| r["room_id"] == room).unwrap().clone();
    assert_eq!(entry["messages"]["chunk"], json!([]), "{entry}");
    // /events from /initialSync's end: what happened since, with its room.
    let end = init["end"].as_str().unwrap().to_owned();
    let second = alice.send_text(&room, "deux").await;
    let events = alice.ok(Method::GET, &format!("/_matrix/client/v3/events?from={end}&timeout=1000"), None).await;
    let chunk = events["chunk"].as_array().unwrap();
    let got = chunk.iter().find(|e| e["event_id"] == second).expect("the new message");
    assert_eq!(got["room_id"], room);
    assert!(!chunk.iter().any(|e| e["event_id"] == first), "{events}");
    // Nothing new: an empty chunk after the timeout, and the same position.
    let next = events["end"].as_str().unwrap();
    let quiet = alice.ok(Method::GET, &format!("/_matrix/client/v3/events?from={next}&timeout=50"), None).await;
    assert_eq!(quiet["chunk"], json!([]));
    // /rooms/{id}/initialSync: one room, for its members only.
    let one = alice.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/initialSync"), None).await;
    assert_eq!(one["membership"], "join");
    let chunk = one["messages"]["chunk"].as_array().unwrap();
    assert_eq!(chunk.last().unwrap()["event_id"], second);
    // With its members' presence and the caller's account data of the room (tags).
    assert!(one["presence"].as_array().unwrap().iter().any(|p| p["content"]["user_id"] == alice.user_id), "{one}");
    let tag = format!("/_matrix/client/v3/user/{}/rooms/{room}/tags/u.work", urlencode(&alice.user_id));
    alice.ok(Method::PUT, &tag, Some(&json!({ "order": 0.5 }))).await;
    let one = alice.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/initialSync?limit=0"), None).await;
    assert_eq!(one["messages"]["chunk"], json!([]), "{one}");
    let tags = one["account_data"].as_array().unwrap().iter().find(|e| e["type"] == "m.tag").cloned();
    assert_eq!(tags.expect("m.tag")["content"]["tags"]["u.work"]["order"], 0.5);
    assert_eq!(one["receipts"], json!([]));
    let bob = server.register("bob").await;
    let (status, _) = bob.get(&format!("/_matrix/client/v3/rooms/{room}/initialSync")).await;
    assert_eq!(status, 403);
    // Synapse's send and redact without a transaction id: each call is a new event.
    let a = alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message"),
            Some(&json!({ "msgtype": "m.text", "body": "x" })),
        )
        .await;
    let b = alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message"),
            Some(&json!({ "msgtype": "m.text", "body": "x" })),
        )
        .await;
    assert_ne!(a["event_id"], b["event_id"]);
    let r = alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/redact/{}", urlencode(a["event_id"].as_str().unwrap())),
            Some(&json!({})),
        )
        .await;
    let redacted = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{room}/event/{}", urlencode(a["event_id"].as_str().unwrap())),
            None,
        )
        .await;
    assert_eq!(redacted["unsigned"]["redacted_by"], r["event_id"]);
    assert!(redacted["content"].get("body").is_none(), "{redacted}");
    // Bad input gets the spec's errors.
    assert_error(&alice.get("/_matrix/client/v3/events?timeout=soon").await, 400, "M_INVALID_PARAM");
    assert_error(&alice.get("/_matrix/client/v3/initialSync?archived=maybe").await, 400, "M_INVALID_PARAM");
    let (status, v) = alice
        .raw(Method::POST, &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message"), b"not json".to_vec())
        .await;
    assert_eq!((status, v["errcode"].as_str()), (400, Some("M_NOT_JSON")), "{v}");
    let typing = format!("/_matrix/client/v3/rooms/{room}/typing/{}", alice.user_id);
    assert_error(&alice.put(&typing, &json!({ "typing": "yes" })).await, 400, "M_BAD_JSON");
    assert_error(&alice.put(&typing, &json!({})).await, 400, "M_MISSING_PARAM");
    alice.ok(Method::PUT, &typing, Some(&json!({ "typing": true }))).await;
    let upgrade = format!("/_matrix/client/v3/rooms/{room}/upgrade");
    assert_error(&alice.post(&upgrade, &json!({})).await, 400, "M_MISSING_PARAM");
    // /events reads only rooms the caller joined, or may peek at (world-readable ones).
    let events = format!("/_matrix/client/v3/events?room_id={room}&timeout=0");
    assert_error(&bob.get(&events).await, 403, "M_FORBIDDEN");
    let open = alice.create_room(json!({ "preset": "public_chat" })).await;
    let visibility = format!("/_matrix/client/v3/rooms/{open}/state/m.room.history_visibility/");
    alice.ok(Method::PUT, &visibility, Some(&json!({ "history_visibility": "world_readable" }))).await;
    let peek = bob.ok(Method::GET, &format!("/_matrix/client/v3/events?room_id={open}&timeout=0"), None).await;
    let end = peek["end"].as_str().unwrap().to_owned();
    alice.send_text(&open, "à qui veut lire").await;
    let peek =
        bob.ok(Method::GET, &format!("/_matrix/client/v3/events?room_id={open}&from={end}&timeout=5000"), None).await;
    let chunk = peek["chunk"].as_array().unwrap();
    assert!(chunk.iter().any(|e| e["content"]["body"] == "à qui veut lire" && e["room_id"] == open.as_str()), "{peek}");
    assert!(chunk.iter().all(|e| e["user_id"] == e["sender"]), "{peek}");
    // The room's typing wakes a waiting call.
    let end = peek["end"].as_str().unwrap().to_owned();
    let waiting = {
        let (bob, path) = (bob.clone(), format!("/_matrix/client/v3/events?room_id={open}&from={end}&timeout=20000"));
        tokio::spawn(async move { bob.ok(Method::GET, &path, None).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the call waits while nothing happens");
    let typing = format!("/_matrix/client/v3/rooms/{open}/typing/{}", alice.user_id);
    alice.ok(Method::PUT, &typing, Some(&json!({ "typing": true, "timeout": 10000 }))).await;
    let woke = waiting.await.unwrap();
    let chunk = woke["chunk"].as_array().unwrap();
    assert!(
        chunk.iter().any(|e| e["type"] == "m.typing"
            && e["room_id"] == open.as_str()
            && e["content"]["user_ids"][0] == alice.user_id.as_str()),
        "{woke}"
    );
    // The presence of the room's members comes; of others, not.
    let dora = server.register("dora").await;
    let end = woke["end"].as_str().unwrap().to_owned();
    let presence =
        |c: &diplomatie_tests::Client| format!("/_matrix/client/v3/presence/{}/status", urlencode(&c.user_id));
    dora.ok(Method::PUT, &presence(&dora), Some(&json!({ "presence": "online", "status_msg": "ailleurs" }))).await;
    alice.ok(Method::PUT, &presence(&alice), Some(&json!({ "presence": "online", "status_msg": "ici" }))).await;
    let got =
        bob.ok(Method::GET, &format!("/_matrix/client/v3/events?room_id={open}&from={end}&timeout=5000"), None).await;
    let chunk = got["chunk"].as_array().unwrap();
    assert!(
        chunk.iter().any(|e| e["type"] == "m.presence" && e["content"]["user_id"] == alice.user_id.as_str()),
        "{got}"
    );
    assert!(
        !chunk.iter().any(|e| e["type"] == "m.presence" && e["content"]["user_id"] == dora.user_id.as_str()),
        "{got}"
    );
}

async fn reports_reach_administrators_and_moderators(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let root = server.admin().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let insult = bob.send_text(&room, "propos déplacé").await;
    let report_event = |id: &str| format!("/_matrix/client/v3/rooms/{room}/report/{}", urlencode(id));

    // An event: by a member who sees it, with a reason and a score from -100 to 0.
    alice.ok(Method::POST, &report_event(&insult), Some(&json!({ "reason": "injurieux", "score": -100 }))).await;
    assert_error(&alice.post(&report_event(&insult), &json!({ "score": 5 })).await, 400, "M_INVALID_PARAM");
    assert_error(&alice.post(&report_event(&insult), &json!({ "score": "bad" })).await, 400, "M_BAD_JSON");
    assert_error(&alice.post(&report_event(&insult), &json!({ "reason": 3 })).await, 400, "M_BAD_JSON");
    let long = "x".repeat(5000);
    assert_error(&alice.post(&report_event(&insult), &json!({ "reason": long })).await, 413, "M_TOO_LARGE");
    // Not joined, or no such event: the same 404.
    assert_error(&carol.post(&report_event(&insult), &json!({ "reason": "?" })).await, 404, "M_NOT_FOUND");
    assert_error(&alice.post(&report_event("$absent:localhost"), &json!({})).await, 404, "M_NOT_FOUND");
    // A room, joined or not; a user. Unknown ones are 404.
    let report_room = format!("/_matrix/client/v3/rooms/{room}/report");
    carol.ok(Method::POST, &report_room, Some(&json!({ "reason": "salon douteux" }))).await;
    let unknown_room = "/_matrix/client/v3/rooms/!absent:localhost/report";
    assert_error(&carol.post(unknown_room, &json!({ "reason": "?" })).await, 404, "M_NOT_FOUND");
    assert_error(&carol.post(&report_room, &json!({ "reason": 5 })).await, 400, "M_BAD_JSON");
    let report_user = |u: &str| format!("/_matrix/client/v3/users/{}/report", urlencode(u));
    carol.ok(Method::POST, &report_user(&bob.user_id), Some(&json!({ "reason": "harcèlement" }))).await;
    assert_error(&carol.post(&report_user("@personne:localhost"), &json!({ "reason": "?" })).await, 404, "M_NOT_FOUND");

    // Administrators read them all, newest first, page by page.
    let all = root.ok(Method::GET, "/_diplomatie/admin/v1/reports", None).await;
    assert_eq!(all["total"], 3, "{all}");
    let kinds: Vec<&str> = all["reports"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["user", "room", "event"]);
    let first = root.ok(Method::GET, "/_diplomatie/admin/v1/reports?limit=2", None).await;
    let next = first["next_token"].as_str().unwrap();
    let rest = root.ok(Method::GET, &format!("/_diplomatie/admin/v1/reports?limit=2&from={next}"), None).await;
    assert_eq!(rest["reports"].as_array().unwrap().len(), 1);
    assert!(rest["next_token"].is_null());
    let event_report = &all["reports"][2];
    assert_eq!(
        (&event_report["user_id"], &event_report["target_user_id"], &event_report["score"], &event_report["reason"]),
        (&json!(alice.user_id), &json!(bob.user_id), &json!(-100), &json!("injurieux"))
    );
    // Synapse's admin API lists the event reports, with the event.
    let synapse = root.ok(Method::GET, "/_synapse/admin/v1/event_reports", None).await;
    assert_eq!(synapse["total"], 1);
    assert_eq!(synapse["event_reports"][0]["sender"], bob.user_id.as_str());
    let id = synapse["event_reports"][0]["id"].as_i64().unwrap();
    let one = root.ok(Method::GET, &format!("/_synapse/admin/v1/event_reports/{id}"), None).await;
    assert_eq!(one["event_json"]["content"]["body"], "propos déplacé");
    // Others are refused.
    assert_error(&alice.get("/_diplomatie/admin/v1/reports").await, 403, "M_FORBIDDEN");
    assert_error(&alice.get("/_synapse/admin/v1/event_reports").await, 403, "M_FORBIDDEN");
    assert_error(&root.get("/_diplomatie/admin/v1/reports?kind=autre").await, 400, "M_INVALID_PARAM");

    // The room's moderators read the reports about their room; its other members do not.
    let room_reports = format!("/_diplomatie/client/v1/rooms/{room}/reports");
    let mine = alice.ok(Method::GET, &room_reports, None).await;
    assert_eq!(mine["total"], 2, "the event's and the room's: {mine}");
    assert_error(&bob.get(&room_reports).await, 403, "M_FORBIDDEN");
    let (status, v) = alice.get(&format!("/_diplomatie/admin/v1/reports/{id}")).await;
    assert_eq!(status, 200, "a moderator reads a report about her room: {v}");
    assert_error(&bob.get(&format!("/_diplomatie/admin/v1/reports/{id}")).await, 403, "M_FORBIDDEN");
    // A report dealt with is removed.
    alice.ok(Method::DELETE, &format!("/_diplomatie/admin/v1/reports/{id}"), None).await;
    assert_error(&root.get(&format!("/_diplomatie/admin/v1/reports/{id}")).await, 404, "M_NOT_FOUND");
    assert_eq!(root.ok(Method::GET, "/_diplomatie/admin/v1/reports", None).await["total"], 2);
}

async fn presence_of_newcomers_comes_with_their_join(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let status = |c: &diplomatie_tests::Client| format!("/_matrix/client/v3/presence/{}/status", urlencode(&c.user_id));
    bob.ok(Method::PUT, &status(&bob), Some(&json!({ "presence": "online", "status_msg": "au bureau" }))).await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let first = alice.sync(None, "").await;
    let since = first["next_batch"].as_str().unwrap().to_owned();

    // Bob joins after Alice's last sync, and his presence did not change since: it comes with
    // his join, once.
    bob.join(&room).await;
    let news = alice.sync(Some(&since), "").await;
    let presence = news["presence"]["events"].as_array().cloned().unwrap_or_default();
    let of_bob: Vec<&Value> = presence.iter().filter(|p| p["sender"] == bob.user_id.as_str()).collect();
    assert_eq!(of_bob.len(), 1, "{news}");
    assert_eq!(of_bob[0]["content"]["status_msg"], "au bureau");
    let next = news["next_batch"].as_str().unwrap().to_owned();
    alice.send_text(&room, "bienvenue").await;
    let again = alice.sync(Some(&next), "").await;
    let presence = again["presence"]["events"].as_array().cloned().unwrap_or_default();
    assert!(presence.iter().all(|p| p["sender"] != bob.user_id.as_str()), "{again}");

    // Dave, never seen online, joins: he is said offline.
    let dave = server.register("dave").await;
    let since = again["next_batch"].as_str().unwrap().to_owned();
    dave.join(&room).await;
    let news = alice.sync(Some(&since), "").await;
    let presence = news["presence"]["events"].as_array().cloned().unwrap_or_default();
    let of_dave: Vec<&Value> = presence.iter().filter(|p| p["sender"] == dave.user_id.as_str()).collect();
    assert_eq!(of_dave.len(), 1, "{news}");
    assert_eq!(of_dave[0]["content"]["presence"], "offline");

    // Alice joins a room of Carol's: Carol's presence comes with the room.
    let carol = server.register("carol").await;
    carol.ok(Method::PUT, &status(&carol), Some(&json!({ "presence": "unavailable" }))).await;
    let other = carol.create_room(json!({ "preset": "public_chat" })).await;
    let since = alice.sync(None, "").await["next_batch"].as_str().unwrap().to_owned();
    alice.join(&other).await;
    let news = alice.sync(Some(&since), "").await;
    let presence = news["presence"]["events"].as_array().cloned().unwrap_or_default();
    assert!(
        presence.iter().any(|p| p["sender"] == carol.user_id.as_str() && p["content"]["presence"] == "unavailable"),
        "{news}"
    );
}
