//! Federation between two instances of this server on loopback (server-server spec): each
//! serves HTTPS on its own port with a self-signed certificate, and is named after it.

use std::time::{Duration, Instant};

use diplomatie_tests::{assert_error, backend_tests, dns::Dns, free_port, urlencode, Backend, Client, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

backend_tests!(
    two_servers_share_a_room,
    users_of_one_server_join_a_remote_room_at_once,
    a_remote_server_cannot_forge_or_force_its_way,
    only_allowed_servers_federate,
    bans_and_acls_hold_across_servers,
    knocking_across_servers,
    guests_follow_a_remote_rooms_guest_access,
    a_space_seen_from_another_server,
    media_travels_between_servers,
    every_room_version_federates,
    history_before_a_join_is_backfilled,
    a_space_lists_rooms_of_another_server,
    the_outbound_queue_survives_restarts,
    servers_named_without_a_port_are_found_through_srv_records,
    a_server_joins_and_leaves_through_the_v1_endpoints,
    an_erased_accounts_events_reach_other_servers_redacted,
    the_notary_answers_what_it_fetched_when_the_server_is_gone,
    an_invite_to_a_room_everyone_left_can_be_rejected,
    an_invite_from_a_server_gone_away_is_refused_here,
);

/// Syncs `client` until `found` holds for a response (20 s at most); answers that response.
async fn sync_until(client: &Client, what: &str, found: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut since: Option<String> = None;
    loop {
        let extra = if since.is_some() { "timeout=1000" } else { "" };
        let v = client.sync(since.as_deref(), extra).await;
        if found(&v) {
            return v;
        }
        since = v["next_batch"].as_str().map(str::to_owned);
        assert!(Instant::now() < deadline, "{what}: not seen in time; last sync: {v}");
    }
}

fn timeline(v: &Value, room: &str) -> Vec<Value> {
    v["rooms"]["join"][room]["timeline"]["events"].as_array().cloned().unwrap_or_default()
}

fn has_message(v: &Value, room: &str, body: &str) -> bool {
    timeline(v, room).iter().any(|e| e["content"]["body"] == body)
}

async fn two_servers_share_a_room(backend: Backend) {
    let a = TestServer::start_federating(backend, &[]).await;
    let b = TestServer::start_federating(backend, &[]).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;

    // B's users see A's public rooms (publicRooms over federation), with a search term too.
    alice.create_room(json!({ "preset": "public_chat", "visibility": "public", "name": "Annuaire de crise" })).await;
    let server = urlencode(&a.server_name);
    let v = bob.ok(Method::GET, &format!("/_matrix/client/v3/publicRooms?server={server}"), None).await;
    assert!(v["chunk"].as_array().unwrap().iter().any(|r| r["name"] == "Annuaire de crise"), "{v}");
    let body = json!({ "filter": { "generic_search_term": "annuaire" } });
    let v = bob.ok(Method::POST, &format!("/_matrix/client/v3/publicRooms?server={server}"), Some(&body)).await;
    assert_eq!(v["chunk"].as_array().unwrap().len(), 1, "{v}");

    // OpenID: a third party learns from A who holds Alice's token (and nothing of a bad one).
    let path = format!("/_matrix/client/v3/user/{}/openid/request_token", urlencode(&alice.user_id));
    let v = alice.ok(Method::POST, &path, Some(&json!({}))).await;
    assert_eq!(
        (v["token_type"].as_str(), v["matrix_server_name"].as_str()),
        (Some("Bearer"), Some(a.server_name.as_str()))
    );
    let token = v["access_token"].as_str().unwrap();
    let (status, v) =
        bob.get(&format!("/_matrix/client/v3/user/{}/openid/request_token", urlencode(&alice.user_id))).await;
    assert_eq!(status, 405, "only POST: {v}");
    let (status, v) = bob.post(&path, &json!({})).await;
    assert_eq!(status, 403, "not for someone else: {v}");
    let userinfo = |t: &str| format!("{}/_matrix/federation/v1/openid/userinfo?access_token={t}", a.base);
    let v: Value = reqwest::get(userinfo(token)).await.unwrap().json().await.unwrap();
    assert_eq!(v["sub"], alice.user_id.as_str());
    let r = reqwest::get(userinfo("forged")).await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = reqwest::get(format!("{}/_matrix/federation/v1/openid/userinfo", a.base)).await.unwrap();
    assert_eq!(r.status().as_u16(), 401, "no token is unauthorised, not malformed");

    // Both servers are named by an IP literal with a port: B's users resolve A's aliases and
    // read A's users' profiles (the query endpoints over federation).
    let public = alice.create_room(json!({ "preset": "public_chat", "room_alias_name": "annuaire" })).await;
    let alias = format!("#annuaire:{}", a.server_name);
    let v = bob.ok(Method::GET, &format!("/_matrix/client/v3/directory/room/{}", urlencode(&alias)), None).await;
    assert_eq!(
        (v["room_id"].as_str(), v["servers"][0].as_str()),
        (Some(public.as_str()), Some(a.server_name.as_str()))
    );
    let missing = format!("/_matrix/client/v3/directory/room/{}", urlencode(&format!("#absent:{}", a.server_name)));
    assert_error(&bob.get(&missing).await, 404, "M_NOT_FOUND");
    let path = format!("/_matrix/client/v3/profile/{}/displayname", urlencode(&alice.user_id));
    alice.ok(Method::PUT, &path, Some(&json!({ "displayname": "Alice (DGM)" }))).await;
    let v = bob.ok(Method::GET, &format!("/_matrix/client/v3/profile/{}", urlencode(&alice.user_id)), None).await;
    assert_eq!(v["displayname"], "Alice (DGM)");
    let v = bob.ok(Method::GET, &path, None).await;
    assert_eq!(v["displayname"], "Alice (DGM)");
    let nobody = format!("/_matrix/client/v3/profile/{}", urlencode(&format!("@personne:{}", a.server_name)));
    assert_error(&bob.get(&nobody).await, 404, "M_NOT_FOUND");

    // Alice creates a room on A and invites Bob of B: B signs the invite, Bob sees it.
    let room = alice.create_room(json!({ "name": "Task force", "preset": "private_chat" })).await;
    let (status, v) = alice.invite(&room, &bob.user_id).await;
    assert_eq!(status, 200, "{v}");
    let v = sync_until(&bob, "invite on B", |v| v["rooms"]["invite"][&room].is_object()).await;
    let shown = &v["rooms"]["invite"][&room]["invite_state"]["events"];
    assert!(
        shown.as_array().unwrap().iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Task force"),
        "{v}"
    );

    // Bob joins through A (make_join / send_join) and sees the room's state and history.
    let (status, v) = bob.join(&room).await;
    assert_eq!(status, 200, "{v}");
    let v = bob.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"), None).await;
    assert_eq!(v["name"], "Task force");
    sync_until(&alice, "Bob's join on A", |v| {
        timeline(v, &room).iter().any(|e| {
            e["type"] == "m.room.member"
                && e["state_key"] == bob.user_id.as_str()
                && e["content"]["membership"] == "join"
        })
    })
    .await;

    // Each finds the other in the user directory, through the room they share.
    let v = alice
        .ok(Method::POST, "/_matrix/client/v3/user_directory/search", Some(&json!({ "search_term": "bob" })))
        .await;
    assert_eq!(v["results"][0]["user_id"], bob.user_id.as_str(), "{v}");
    let v =
        bob.ok(Method::POST, "/_matrix/client/v3/user_directory/search", Some(&json!({ "search_term": "dgm" }))).await;
    assert_eq!(v["results"][0]["display_name"], "Alice (DGM)", "{v}");

    // Messages both ways.
    alice.send_text(&room, "Bonjour de A").await;
    sync_until(&bob, "A's message on B", |v| has_message(v, &room, "Bonjour de A")).await;
    let bob_message = bob.send_text(&room, "Hallo von B").await;
    sync_until(&alice, "B's message on A", |v| has_message(v, &room, "Hallo von B")).await;

    // A state change on B reaches A.
    let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/");
    let (status, v) = bob.put(&path, &json!({ "topic": "Crise" })).await;
    assert_eq!(status, 403, "Bob has no power to change the topic: {v}");
    alice.ok(Method::PUT, &path, Some(&json!({ "topic": "Crise" }))).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, v) = bob.get(&path).await;
        if status == 200 && v["topic"] == "Crise" {
            break;
        }
        assert!(Instant::now() < deadline, "topic not on B: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Typing and read receipts travel as EDUs.
    let typing = format!("/_matrix/client/v3/rooms/{room}/typing/{}", urlencode(&bob.user_id));
    bob.ok(Method::PUT, &typing, Some(&json!({ "typing": true, "timeout": 10000 }))).await;
    sync_until(&alice, "Bob typing on A", |v| {
        v["rooms"]["join"][&room]["ephemeral"]["events"].as_array().is_some_and(|es| {
            es.iter().any(|e| {
                e["type"] == "m.typing"
                    && e["content"]["user_ids"].as_array().is_some_and(|u| u.contains(&json!(bob.user_id)))
            })
        })
    })
    .await;
    let receipt = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{}", urlencode(&bob_message));
    alice.ok(Method::POST, &receipt, Some(&json!({}))).await;
    sync_until(&bob, "Alice's receipt on B", |v| {
        v["rooms"]["join"][&room]["ephemeral"]["events"].as_array().is_some_and(|es| {
            es.iter()
                .any(|e| e["type"] == "m.receipt" && e["content"][&bob_message]["m.read"][&alice.user_id].is_object())
        })
    })
    .await;

    // Presence travels as an EDU too.
    let presence = format!("/_matrix/client/v3/presence/{}/status", urlencode(&bob.user_id));
    bob.ok(Method::PUT, &presence, Some(&json!({ "presence": "unavailable", "status_msg": "En réunion" }))).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, v) = alice.get(&presence).await;
        if status == 200 && v["presence"] == "unavailable" && v["status_msg"] == "En réunion" {
            break;
        }
        assert!(Instant::now() < deadline, "Bob's presence not on A: {status} {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Bob leaves; A sees it, and B is no longer in the room.
    let (status, v) = bob.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), &json!({})).await;
    assert_eq!(status, 200, "{v}");
    sync_until(&alice, "Bob's leave on A", |v| {
        timeline(v, &room).iter().any(|e| {
            e["type"] == "m.room.member"
                && e["state_key"] == bob.user_id.as_str()
                && e["content"]["membership"] == "leave"
        })
    })
    .await;
    let (status, _) = bob
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t1"),
            &json!({ "msgtype": "m.text", "body": "x" }),
        )
        .await;
    assert_eq!(status, 403);
}

/// Another server played by the test: its key is pinned in the configuration of the server
/// under test (which so never fetches it), and it signs its requests and events itself.
struct FakeServer {
    name: String,
    keypair: ruma::signatures::Ed25519KeyPair,
}

impl FakeServer {
    fn new(name: &str) -> FakeServer {
        let der = ruma::signatures::Ed25519KeyPair::generate();
        let keypair = ruma::signatures::Ed25519KeyPair::from_der(&der, "evil".into()).unwrap();
        FakeServer { name: name.into(), keypair }
    }

    /// The configuration that pins this server's key (TOML).
    fn pinned(&self) -> String {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.keypair.public_key());
        format!("[federation.pinned_keys.\"{}\"]\n\"ed25519:evil\" = \"{key}\"\n", self.name)
    }

    /// A request to `server`, signed with `X-Matrix` (or not, or with another key).
    async fn request(
        &self,
        server: &TestServer,
        method: Method,
        path: &str,
        body: Option<&Value>,
        sign: Signing,
    ) -> (u16, Value) {
        use ruma::api::federation::authentication::{XMatrix, XMatrixSigningInput};
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap()).unwrap_or_default();
        let http = http::Request::builder().method(method.as_str()).uri(path).body(bytes.clone()).unwrap();
        let destination: ruma::OwnedServerName = server.server_name.as_str().try_into().unwrap();
        let mut builder = reqwest::Client::new().request(method, format!("{}{path}", server.base));
        let other;
        let keypair = match sign {
            Signing::Good => Some(&self.keypair),
            Signing::OtherKey => {
                let der = ruma::signatures::Ed25519KeyPair::generate();
                other = ruma::signatures::Ed25519KeyPair::from_der(&der, "evil".into()).unwrap();
                Some(&other)
            }
            Signing::None => None,
        };
        if let Some(keypair) = keypair {
            let input = XMatrixSigningInput::new(self.name.as_str().try_into().unwrap(), destination, keypair);
            let header = XMatrix::sign_http_request(&http, input).unwrap();
            builder = builder.header("Authorization", http::HeaderValue::from(&header));
        }
        if body.is_some() {
            builder = builder.header("Content-Type", "application/json").body(bytes);
        }
        let response = builder.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Signs an event (hashes first), as its sender's server would; answers it with its id.
    fn sign(&self, mut event: Value) -> (String, Value) {
        let rules = ruma::RoomVersionId::V12.rules().unwrap();
        event.as_object_mut().unwrap().remove("signatures");
        let mut object: ruma::CanonicalJsonObject = serde_json::from_value(event).unwrap();
        ruma::signatures::hash_and_sign_event(&self.name, &self.keypair, &mut object, &rules.redaction).unwrap();
        let id = format!("${}", ruma::signatures::reference_hash(&object, &rules).unwrap());
        (id, serde_json::to_value(object).unwrap())
    }
}

#[derive(Clone, Copy)]
enum Signing {
    Good,
    OtherKey,
    None,
}

/// A server under test whose configuration file is `toml` (with the federation settings).
async fn start_with_config(backend: Backend, toml: &str) -> TestServer {
    let path = std::env::temp_dir().join(format!("diplomatie-test-{}.toml", rand::random::<u64>()));
    std::fs::write(&path, toml).unwrap();
    let path = path.display().to_string();
    TestServer::start_federating(backend, &[("CONFIG", &path)]).await
}

async fn room_state(client: &Client, room: &str, kind: &str, key: &str) -> (u16, Value) {
    client.get(&format!("/_matrix/client/v3/rooms/{room}/state/{kind}/{}", urlencode(key))).await
}

async fn event_seen(client: &Client, room: &str, event_id: &str) -> (u16, Value) {
    client.get(&format!("/_matrix/client/v3/rooms/{room}/event/{}", urlencode(event_id))).await
}

async fn a_remote_server_cannot_forge_or_force_its_way(backend: Backend) {
    let evil = FakeServer::new("attacker.test");
    let a = start_with_config(backend, &evil.pinned()).await;
    let alice = a.register("alice").await;
    let room = alice.create_room(json!({ "preset": "public_chat", "name": "Open" })).await;
    let eve = format!("@eve:{}", evil.name);
    let make_join = format!("/_matrix/federation/v1/make_join/{}/{}?ver=12", urlencode(&room), urlencode(&eve));

    // Requests must carry a valid X-Matrix signature of their origin.
    let (status, v) = evil.request(&a, Method::GET, &make_join, None, Signing::None).await;
    assert_eq!((status, v["errcode"].as_str()), (401, Some("M_UNAUTHORIZED")), "{v}");
    let (status, v) = evil.request(&a, Method::GET, &make_join, None, Signing::OtherKey).await;
    assert_eq!((status, v["errcode"].as_str()), (401, Some("M_UNAUTHORIZED")), "{v}");
    // Only for its own users.
    let alice_join =
        format!("/_matrix/federation/v1/make_join/{}/{}?ver=12", urlencode(&room), urlencode(&alice.user_id));
    let (status, v) = evil.request(&a, Method::GET, &alice_join, None, Signing::Good).await;
    assert_eq!((status, v["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{v}");

    // A template altered on the way back (CVE-2026-24471): never accepted, never signed.
    let (status, v) = evil.request(&a, Method::GET, &make_join, None, Signing::Good).await;
    assert_eq!(status, 200, "{v}");
    let template = v["event"].clone();
    let levels_before = room_state(&alice, &room, "m.room.power_levels", "").await.1;
    let forged = [
        // Power levels instead of a join.
        {
            let mut e = template.clone();
            e["type"] = json!("m.room.power_levels");
            e["state_key"] = json!("");
            e["content"] = json!({ "users": { eve.clone(): 100 }, "join_authorised_via_users_server": alice.user_id });
            e
        },
        // A join of another server's user.
        {
            let mut e = template.clone();
            e["sender"] = json!(alice.user_id);
            e["state_key"] = json!(alice.user_id);
            e
        },
        // A ban instead of a join.
        {
            let mut e = template.clone();
            e["content"] = json!({ "membership": "ban" });
            e["state_key"] = json!(alice.user_id);
            e
        },
    ];
    for e in forged {
        let mut e = e;
        e["origin_server_ts"] = json!(1);
        let (id, signed) = evil.sign(e);
        let path = format!("/_matrix/federation/v2/send_join/{}/{}", urlencode(&room), urlencode(&id));
        let (status, v) = evil.request(&a, Method::PUT, &path, Some(&signed), Signing::Good).await;
        assert_eq!((status, v["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{v}");
        assert!(v.get("event").is_none() && v.get("state").is_none(), "{v}");
        assert_eq!(event_seen(&alice, &room, &id).await.0, 404);
    }
    assert_eq!(room_state(&alice, &room, "m.room.power_levels", "").await.1, levels_before);
    // The event at a time: only for a server in the room.
    let at_time = format!("/_matrix/federation/v1/timestamp_to_event/{}?ts=0&dir=f", urlencode(&room));
    let (status, v) = evil.request(&a, Method::GET, &at_time, None, Signing::Good).await;
    assert_eq!(status, 403, "{v}");
    // The join as the template says: accepted, with the room's state.
    let (join_id, join) = evil.sign(template);
    let path = format!("/_matrix/federation/v2/send_join/{}/{}", urlencode(&room), urlencode(&join_id));
    let (status, v) = evil.request(&a, Method::PUT, &path, Some(&join), Signing::Good).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["state"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"), "{v}");
    assert_eq!(room_state(&alice, &room, "m.room.member", &eve).await.1["membership"], "join");
    let (status, v) = evil.request(&a, Method::GET, &at_time, None, Signing::Good).await;
    assert_eq!(status, 200, "{v}");
    let first = event_seen(&alice, &room, v["event_id"].as_str().unwrap()).await.1;
    assert_eq!(first["type"], "m.room.create", "the room's first event: {first}");
    let (status, v) = evil.request(&a, Method::GET, &at_time.replace("dir=f", "dir=b"), None, Signing::Good).await;
    assert_eq!(status, 404, "nothing before the epoch: {v}");

    // make_leave / send_leave: a leave, nothing else.
    let make_leave = format!("/_matrix/federation/v1/make_leave/{}/{}", urlencode(&room), urlencode(&eve));
    let (status, v) = evil.request(&a, Method::GET, &make_leave, None, Signing::Good).await;
    assert_eq!(status, 200, "{v}");
    let mut e = v["event"].clone();
    e["content"] = json!({ "membership": "join" });
    let (id, signed) = evil.sign(e);
    let path = format!("/_matrix/federation/v2/send_leave/{}/{}", urlencode(&room), urlencode(&id));
    let (status, v) = evil.request(&a, Method::PUT, &path, Some(&signed), Signing::Good).await;
    assert_eq!((status, v["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{v}");

    // PDUs: one good, one badly signed, one with an altered content, one the rules forbid.
    let last = alice.send_text(&room, "avant").await;
    let base = |kind: &str, content: Value, state_key: Option<&str>| {
        let mut e = json!({
            "type": kind, "room_id": room, "sender": eve, "content": content,
            "origin_server_ts": 1_000, "depth": 100, "prev_events": [last], "auth_events": [],
        });
        if let Some(k) = state_key {
            e["state_key"] = json!(k);
        }
        e
    };
    // Auth events: Eve's join, the power levels, the create event is implied (v12).
    let levels_id = alice
        .get(&format!("/_matrix/client/v3/rooms/{room}/state"))
        .await
        .1
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.power_levels")
        .unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let with_auth = |mut e: Value| {
        e["auth_events"] = json!([join_id, levels_id]);
        e
    };
    let (good_id, good) =
        evil.sign(with_auth(base("m.room.message", json!({ "msgtype": "m.text", "body": "bonjour" }), None)));
    let (bad_sig_id, mut bad_sig) =
        evil.sign(with_auth(base("m.room.message", json!({ "msgtype": "m.text", "body": "faux" }), None)));
    bad_sig["signatures"][&evil.name]["ed25519:evil"] = json!("AAAA");
    let (altered_id, mut altered) =
        evil.sign(with_auth(base("m.room.message", json!({ "msgtype": "m.text", "body": "original" }), None)));
    altered["content"]["body"] = json!("altéré");
    let (forbidden_id, forbidden) = evil.sign(with_auth(base(
        "m.room.power_levels",
        json!({ "users": { eve.clone(): 100, alice.user_id.clone(): 100 } }),
        Some(""),
    )));
    let txn = json!({ "origin": evil.name, "origin_server_ts": 1_000, "pdus": [good, bad_sig, altered, forbidden] });
    let (status, v) = evil.request(&a, Method::PUT, "/_matrix/federation/v1/send/t1", Some(&txn), Signing::Good).await;
    assert_eq!(status, 200, "{v}");
    let results = &v["pdus"];
    assert_eq!(results[&good_id], json!({}), "{v}");
    assert!(results[&bad_sig_id]["error"].is_string(), "{v}");
    // An event the authorisation rules refuse was processed: `{}`, as Synapse answers and
    // peers expect, and it is not taken.
    assert_eq!(results[&forbidden_id], json!({}), "{v}");
    assert_eq!(event_seen(&alice, &room, &good_id).await.1["content"]["body"], "bonjour");
    assert_eq!(event_seen(&alice, &room, &bad_sig_id).await.0, 404);
    assert_eq!(event_seen(&alice, &room, &forbidden_id).await.0, 404);
    assert_eq!(room_state(&alice, &room, "m.room.power_levels", "").await.1, levels_before);
    // An altered content is kept redacted, as the spec says: never the altered text.
    let (status, v) = event_seen(&alice, &room, &altered_id).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["content"].get("body").is_none(), "{v}");
    // The same transaction again changes nothing and gets the same answer.
    let (status, again) =
        evil.request(&a, Method::PUT, "/_matrix/federation/v1/send/t1", Some(&txn), Signing::Good).await;
    assert_eq!((status, &again["pdus"]), (200, results));

    // An event citing the rejected one stands on the state before it (a rejected event
    // changes no state); one citing an event nobody gives is refused; a redaction aimed at
    // another room's event is refused.
    let mut after = with_auth(base("m.room.message", json!({ "msgtype": "m.text", "body": "après" }), None));
    after["prev_events"] = json!([forbidden_id]);
    after["depth"] = json!(101);
    let (after_id, after) = evil.sign(after);
    let mut orphan = with_auth(base("m.room.message", json!({ "msgtype": "m.text", "body": "orphelin" }), None));
    orphan["prev_events"] = json!([format!("${}", "A".repeat(43))]);
    let (orphan_id, orphan) = evil.sign(orphan);
    let other = alice.create_room(json!({ "preset": "public_chat" })).await;
    let elsewhere = alice.send_text(&other, "ailleurs").await;
    let (redaction_id, redaction) =
        evil.sign(with_auth(base("m.room.redaction", json!({ "redacts": elsewhere }), None)));
    let txn = json!({ "origin": evil.name, "origin_server_ts": 1_200, "pdus": [after, orphan, redaction] });
    let (status, v) = evil.request(&a, Method::PUT, "/_matrix/federation/v1/send/t4", Some(&txn), Signing::Good).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(event_seen(&alice, &room, &after_id).await.1["content"]["body"], "après");
    assert_eq!(event_seen(&alice, &room, &orphan_id).await.0, 404);
    assert_eq!(event_seen(&alice, &room, &redaction_id).await.0, 404);
    assert_eq!(event_seen(&alice, &other, &elsewhere).await.1["content"]["body"], "ailleurs");

    // Soft failure: an event the state before it allows, but the current state forbids (Eve
    // is banned meanwhile), is kept out of the timeline and the state.
    alice.ok(Method::POST, &format!("/_matrix/client/v3/rooms/{room}/ban"), Some(&json!({ "user_id": eve }))).await;
    let (stale_id, stale) =
        evil.sign(with_auth(base("m.room.message", json!({ "msgtype": "m.text", "body": "trop tard" }), None)));
    let txn = json!({ "origin": evil.name, "origin_server_ts": 1_500, "pdus": [stale] });
    let (status, v) = evil.request(&a, Method::PUT, "/_matrix/federation/v1/send/t3", Some(&txn), Signing::Good).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["pdus"][&stale_id], json!({}), "{v}");
    assert_eq!(event_seen(&alice, &room, &stale_id).await.0, 404);
    assert_eq!(room_state(&alice, &room, "m.room.member", &eve).await.1["membership"], "ban");

    // A server ACL shuts the server out of every path.
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.server_acl/"),
            Some(&json!({ "allow": ["*"], "deny": [evil.name], "allow_ip_literals": true })),
        )
        .await;
    let (status, v) = evil.request(&a, Method::GET, &make_join, None, Signing::Good).await;
    assert_eq!(status, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("server ACL"), "{v}");
    let (late_id, late) =
        evil.sign(with_auth(base("m.room.message", json!({ "msgtype": "m.text", "body": "encore" }), None)));
    let txn = json!({ "origin": evil.name, "origin_server_ts": 2_000, "pdus": [late] });
    let (status, v) = evil.request(&a, Method::PUT, "/_matrix/federation/v1/send/t2", Some(&txn), Signing::Good).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["pdus"][&late_id]["error"].as_str().unwrap().contains("server ACL"), "{v}");
    assert_eq!(event_seen(&alice, &room, &late_id).await.0, 404);
}

async fn only_allowed_servers_federate(backend: Backend) {
    let friend = FakeServer::new("partner.test");
    let stranger = FakeServer::new("stranger.test");
    let config =
        format!("[federation]\nallowed_servers = [\"partner.test\"]\n{}{}", friend.pinned(), stranger.pinned());
    let a = start_with_config(backend, &config).await;
    let alice = a.register("alice").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let path = |user: &str| format!("/_matrix/federation/v1/make_join/{}/{}?ver=12", urlencode(&room), urlencode(user));
    let (status, v) = friend.request(&a, Method::GET, &path("@p:partner.test"), None, Signing::Good).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = stranger.request(&a, Method::GET, &path("@s:stranger.test"), None, Signing::Good).await;
    assert_eq!((status, v["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{v}");
    // Outbound too: no invite leaves for a server off the list.
    let (status, v) = alice.invite(&room, "@s:stranger.test").await;
    assert_eq!((status, v["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{v}");
}

async fn bans_and_acls_hold_across_servers(backend: Backend) {
    let a = TestServer::start_federating(backend, &[]).await;
    let b = TestServer::start_federating(backend, &[]).await;
    // Named `localhost:<port>`: server ACLs match host names, without ports.
    let c = TestServer::start_federating_as(backend, "localhost", &[]).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let carol = c.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let (status, v) = bob
        .post(&format!("/_matrix/client/v3/join/{}?via={}", urlencode(&room), urlencode(&a.server_name)), &json!({}))
        .await;
    assert_eq!(status, 200, "{v}");
    // A server ACL on A keeps C out.
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.server_acl/"),
            Some(&json!({ "allow": ["*"], "deny": ["localhost"], "allow_ip_literals": true })),
        )
        .await;
    let (status, v) = carol
        .post(&format!("/_matrix/client/v3/join/{}?via={}", urlencode(&room), urlencode(&a.server_name)), &json!({}))
        .await;
    assert_eq!(status, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("server ACL"), "{v}");
    // A ban on A is enforced on B: Bob can no longer send there.
    bob.send_text(&room, "avant").await;
    alice
        .ok(Method::POST, &format!("/_matrix/client/v3/rooms/{room}/ban"), Some(&json!({ "user_id": bob.user_id })))
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = room_state(&bob, &room, "m.room.member", &bob.user_id).await;
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{}", rand::random::<u32>());
        let (send, v) = bob.put(&path, &json!({ "msgtype": "m.text", "body": "après" })).await;
        if send == 403 {
            break;
        }
        assert!(Instant::now() < deadline, "the ban did not reach B ({status}): {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, v) = bob.join(&room).await;
    assert_eq!(status, 403, "{v}");
}

async fn knocking_across_servers(backend: Backend) {
    let a = TestServer::start_federating(backend, &[]).await;
    let b = TestServer::start_federating(backend, &[]).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice
        .create_room(json!({
            "name": "Sur demande",
            "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }],
        }))
        .await;
    // Bob knocks through A (make_knock / send_knock) and is shown the room.
    let path = format!("/_matrix/client/v3/knock/{}?via={}", urlencode(&room), urlencode(&a.server_name));
    let (status, v) = bob.post(&path, &json!({ "reason": "Pour la cellule" })).await;
    assert_eq!(status, 200, "{v}");
    let v = sync_until(&bob, "knock on B", |v| v["rooms"]["knock"][&room].is_object()).await;
    let shown = &v["rooms"]["knock"][&room]["knock_state"]["events"];
    assert!(
        shown.as_array().unwrap().iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Sur demande"),
        "{v}"
    );
    let member = room_state(&alice, &room, "m.room.member", &bob.user_id).await.1;
    assert_eq!((member["membership"].as_str(), member["reason"].as_str()), (Some("knock"), Some("Pour la cellule")));
    // Alice lets him in: the invite reaches B, and Bob joins.
    let (status, v) = alice.invite(&room, &bob.user_id).await;
    assert_eq!(status, 200, "{v}");
    sync_until(&bob, "invite on B", |v| v["rooms"]["invite"][&room].is_object()).await;
    let (status, v) = bob.join(&room).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(room_state(&alice, &room, "m.room.member", &bob.user_id).await.1["membership"], "join");
}

/// A guest of B in a room of A: refused when the invite shows guests are not let in; in a room
/// that lets them in, made to leave when a user of A closes it (B follows the change it receives).
async fn guests_follow_a_remote_rooms_guest_access(backend: Backend) {
    let a = TestServer::start_federating(backend, &[]).await;
    let b = TestServer::start_federating(backend, &[("REGISTRATION__ALLOW_GUESTS", "true")]).await;
    let alice = a.register("alice").await;
    let guest = b.register_guest().await;
    let access = |room: &str| format!("/_matrix/client/v3/rooms/{room}/state/m.room.guest_access/");

    let closed = alice.create_room(json!({ "preset": "private_chat" })).await;
    alice.ok(Method::PUT, &access(&closed), Some(&json!({ "guest_access": "forbidden" }))).await;
    assert_eq!(alice.invite(&closed, &guest.user_id).await.0, 200);
    sync_until(&guest, "invite on B", |v| v["rooms"]["invite"][&closed].is_object()).await;
    assert_error(&guest.join(&closed).await, 403, "M_GUEST_ACCESS_FORBIDDEN");
    assert_eq!(room_state(&alice, &closed, "m.room.member", &guest.user_id).await.1["membership"], "invite");

    let open = alice.create_room(json!({ "preset": "private_chat" })).await;
    alice.ok(Method::PUT, &access(&open), Some(&json!({ "guest_access": "can_join" }))).await;
    assert_eq!(alice.invite(&open, &guest.user_id).await.0, 200);
    sync_until(&guest, "invite on B", |v| v["rooms"]["invite"][&open].is_object()).await;
    let (status, v) = guest.join(&open).await;
    assert_eq!(status, 200, "{v}");
    alice.ok(Method::PUT, &access(&open), Some(&json!({ "guest_access": "forbidden" }))).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while room_state(&alice, &open, "m.room.member", &guest.user_id).await.1["membership"] != "leave" {
        assert!(Instant::now() < deadline, "the guest of B never left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_space_seen_from_another_server(backend: Backend) {
    let other = FakeServer::new("partner.test");
    let a = start_with_config(backend, &other.pinned()).await;
    let alice = a.register("alice").await;
    let space = alice
        .create_room(json!({ "preset": "public_chat", "name": "Direction", "creation_content": { "type": "m.space" } }))
        .await;
    let open = alice.create_room(json!({ "preset": "public_chat", "name": "Ouvert" })).await;
    let closed = alice.create_room(json!({ "preset": "private_chat", "name": "Fermé" })).await;
    for child in [&open, &closed] {
        let path = format!("/_matrix/client/v3/rooms/{space}/state/m.space.child/{}", urlencode(child));
        alice.ok(Method::PUT, &path, Some(&json!({ "via": [a.server_name] }))).await;
    }
    let path = format!("/_matrix/federation/v1/hierarchy/{}", urlencode(&space));
    let (status, v) = other.request(&a, Method::GET, &path, None, Signing::Good).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["room"]["name"], "Direction");
    assert_eq!(v["room"]["children_state"].as_array().unwrap().len(), 2, "{v}");
    let children: Vec<&str> = v["children"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(children, ["Ouvert"], "{v}");
    assert_eq!(v["inaccessible_children"], json!([closed]), "{v}");
    // A private room is not shown to a server with no user in it.
    let path = format!("/_matrix/federation/v1/hierarchy/{}", urlencode(&closed));
    let (status, v) = other.request(&a, Method::GET, &path, None, Signing::Good).await;
    assert_eq!((status, v["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{v}");
}

/// A download as raw bytes: status, content type, disposition and body.
async fn download(c: &Client, path: &str) -> (u16, String, String, Vec<u8>) {
    let r = c.http.get(format!("{}{path}", c.base)).bearer_auth(c.token.as_deref().unwrap()).send().await.unwrap();
    let header = |n: &str| r.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let (ct, cd) = (header("content-type"), header("content-disposition"));
    (r.status().as_u16(), ct, cd, r.bytes().await.unwrap().to_vec())
}

async fn upload(c: &Client, content_type: &str, filename: &str, bytes: Vec<u8>) -> String {
    let r = c
        .http
        .post(format!("{}/_matrix/media/v3/upload?filename={filename}", c.base))
        .bearer_auth(c.token.as_deref().unwrap())
        .header("content-type", content_type)
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    v["content_uri"].as_str().unwrap().trim_start_matches("mxc://").to_owned()
}

async fn media_travels_between_servers(backend: Backend) {
    let mut a = TestServer::start_federating(backend, &[]).await;
    let b = TestServer::start_federating(backend, &[]).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;

    // Bob, on B, downloads what Alice uploaded to A: B fetches it over federation.
    let text = "Compte rendu de la réunion de crise".as_bytes().to_vec();
    let note = upload(&alice, "text/plain", "cr.txt", text.clone()).await;
    let (status, ct, cd, body) = download(&bob, &format!("/_matrix/client/v1/media/download/{note}")).await;
    assert_eq!((status, ct.as_str(), body), (200, "text/plain", text.clone()));
    assert!(cd.starts_with("inline") && cd.contains("cr.txt"), "{cd}");
    // Thumbnails of remote images are made from the fetched original.
    let mut png = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(400, 300, image::Rgb([0, 85, 164])))
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    let flag = upload(&alice, "image/png", "drapeau.png", png.into_inner()).await;
    let path = format!("/_matrix/client/v1/media/thumbnail/{flag}?width=96&height=96&method=crop");
    let (status, ct, _, body) = download(&bob, &path).await;
    assert_eq!((status, ct.as_str()), (200, "image/jpeg"));
    let size = image::ImageReader::new(std::io::Cursor::new(body)).with_guessed_format().unwrap().into_dimensions();
    assert_eq!(size.unwrap(), (96, 96));
    // A's own federation endpoint wants a signed request.
    let media_id = note.split('/').nth(1).unwrap();
    let r = reqwest::get(format!("{}/_matrix/federation/v1/media/download/{media_id}", a.base)).await.unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // Unknown media on A is unknown on B; a server that cannot be reached is a 502.
    let (status, v) = bob.get(&format!("/_matrix/client/v1/media/download/{}/nothing_here", a.server_name)).await;
    assert_eq!((status, v["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{v}");
    let (status, v) = bob.get("/_matrix/client/v1/media/download/127.0.0.1:9/unreachable").await;
    assert_eq!((status, v["errcode"].as_str()), (502, Some("M_UNKNOWN")), "{v}");
    // A server that does not federate never fetches remote media.
    let c = TestServer::start(backend, &[]).await;
    let carol = c.register("carol").await;
    let (status, v) = carol.get(&format!("/_matrix/client/v1/media/download/{note}")).await;
    assert_eq!((status, v["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{v}");

    // B keeps what it fetched: served while A is down.
    a.kill().await;
    let (status, _, _, body) = download(&bob, &format!("/_matrix/client/v1/media/download/{note}")).await;
    assert_eq!((status, body), (200, text));
}

/// Events queued for a server that is down are kept in the database: they reach it after both
/// servers restart.
async fn the_outbound_queue_survives_restarts(backend: Backend) {
    let mut a = TestServer::start_federating(backend, &[]).await;
    let mut b = TestServer::start_federating(backend, &[]).await;
    let alice = a.register("alice").await;
    let mut bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let join = format!("/_matrix/client/v3/join/{}?via={}", urlencode(&room), urlencode(&a.server_name));
    bob.ok(Method::POST, &join, Some(&json!({}))).await;

    b.kill().await;
    alice.send_text(&room, "Envoyé pendant la panne").await;
    // Let A try (and fail) at least once, then kill it too before B is back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.kill().await;
    b.launch().await;
    a.launch().await;
    bob.base = b.base.clone();
    sync_until(&bob, "the queued message on B", |v| has_message(v, &room, "Envoyé pendant la panne")).await;
}

/// A space on B lists rooms of A: B asks A for them (federation `hierarchy`) and shows Bob what
/// an outsider may see.
async fn a_space_lists_rooms_of_another_server(backend: Backend) {
    let a = TestServer::start_federating(backend, &[]).await;
    let b = TestServer::start_federating(backend, &[]).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let open = alice.create_room(json!({ "preset": "public_chat", "name": "Salle de A", "topic": "Ouverte" })).await;
    let closed = alice.create_room(json!({ "preset": "private_chat", "name": "Secret de A" })).await;
    let space = bob
        .create_room(
            json!({ "preset": "public_chat", "name": "Espace de B", "creation_content": { "type": "m.space" } }),
        )
        .await;
    let local = bob.create_room(json!({ "preset": "public_chat", "name": "Salle de B" })).await;
    for (child, server) in [(&open, &a.server_name), (&closed, &a.server_name), (&local, &b.server_name)] {
        let path = format!("/_matrix/client/v3/rooms/{space}/state/m.space.child/{}", urlencode(child));
        bob.ok(Method::PUT, &path, Some(&json!({ "via": [server] }))).await;
    }
    let v = bob.ok(Method::GET, &format!("/_matrix/client/v1/rooms/{space}/hierarchy"), None).await;
    let rooms = v["rooms"].as_array().unwrap();
    let names: Vec<&str> = rooms.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names.len(), 3, "{v}");
    for name in ["Espace de B", "Salle de A", "Salle de B"] {
        assert!(names.contains(&name), "{name} missing: {v}");
    }
    let remote = rooms.iter().find(|r| r["room_id"] == open.as_str()).unwrap();
    assert_eq!((remote["topic"].as_str(), remote["num_joined_members"].as_u64()), (Some("Ouverte"), Some(1)), "{v}");
    assert!(!rooms.iter().any(|r| r["room_id"] == closed.as_str()), "{v}");
}

/// Every page of `/messages` backwards from the end (until no `end`), events newest first.
async fn all_messages_backwards(client: &Client, room: &str, limit: usize) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..50 {
        let mut path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit={limit}", urlencode(room));
        if let Some(f) = &from {
            path.push_str(&format!("&from={}", urlencode(f)));
        }
        let v = client.ok(Method::GET, &path, None).await;
        events.extend(v["chunk"].as_array().cloned().unwrap_or_default());
        match v["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => return events,
        }
    }
    panic!("pagination never ended");
}

/// B joins a room with history: paginating back past the join, Bob reads what was said before
/// (A's `/backfill`), in order, down to the room's creation; unless the room shows its history
/// to joined members only.
async fn history_before_a_join_is_backfilled(backend: Backend) {
    let a = TestServer::start_federating(backend, &[]).await;
    let b = TestServer::start_federating(backend, &[]).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let via = urlencode(&a.server_name);

    let room = alice.create_room(json!({ "preset": "public_chat", "name": "Archives" })).await;
    for i in 0..30 {
        alice.send_text(&room, &format!("avant {i}")).await;
    }
    let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/");
    alice.ok(Method::PUT, &path, Some(&json!({ "topic": "Historique" }))).await;
    bob.ok(Method::POST, &format!("/_matrix/client/v3/join/{}?via={via}", urlencode(&room)), Some(&json!({}))).await;
    bob.send_text(&room, "après").await;

    let events = all_messages_backwards(&bob, &room, 7).await;
    let bodies: Vec<&str> = events.iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    let expected: Vec<String> =
        std::iter::once("après".to_owned()).chain((0..30).rev().map(|i| format!("avant {i}"))).collect();
    assert_eq!(bodies, expected, "{events:?}");
    assert_eq!(events.last().unwrap()["type"], "m.room.create", "down to the creation");
    assert!(events.iter().any(|e| e["type"] == "m.room.topic" && e["content"]["topic"] == "Historique"));
    let ids: std::collections::HashSet<&str> = events.iter().filter_map(|e| e["event_id"].as_str()).collect();
    assert_eq!(ids.len(), events.len(), "each event once");
    // A backfilled event is readable on its own too.
    let first = events.iter().find(|e| e["content"]["body"] == "avant 0").unwrap();
    let (status, v) = event_seen(&bob, &room, first["event_id"].as_str().unwrap()).await;
    assert_eq!((status, v["content"]["body"].as_str()), (200, Some("avant 0")), "{v}");
    // Paginating again asks nothing more and finds the same.
    assert_eq!(all_messages_backwards(&bob, &room, 50).await.len(), events.len());
    // Backfilled messages are searchable, and stay so when the index is made anew from the
    // database (B restarted without its index: the start-up catch-up, then a rebuild).
    let search = |bob: &Client| {
        let bob = bob.clone();
        async move {
            let q = json!({ "search_categories": { "room_events": { "search_term": "avant" } } });
            bob.ok(Method::POST, "/_matrix/client/v3/search", Some(&q)).await["search_categories"]["room_events"]
                ["count"]
                .clone()
        }
    };
    assert_eq!(search(&bob).await, 30);
    let mut b = b;
    b.kill().await;
    std::fs::remove_dir_all(b.data_dir.path().join("search")).unwrap();
    b.launch().await;
    let mut bob = bob;
    bob.base = b.base.clone();
    assert_eq!(search(&bob).await, 30);
    b.kill().await;
    std::fs::remove_dir_all(b.data_dir.path().join("search")).unwrap();
    let out = b.command(&["search", "rebuild"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    b.launch().await;
    bob.base = b.base.clone();
    assert_eq!(search(&bob).await, 30);

    // History shown to joined members only stays hidden.
    let closed = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{ "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "joined" } }],
        }))
        .await;
    alice.send_text(&closed, "entre nous").await;
    bob.ok(Method::POST, &format!("/_matrix/client/v3/join/{}?via={via}", urlencode(&closed)), Some(&json!({}))).await;
    let events = all_messages_backwards(&bob, &closed, 10).await;
    assert!(!events.iter().any(|e| e["content"]["body"] == "entre nous"), "{events:?}");
    assert!(events.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str()));
}

/// Rooms of every version the server offers are joined across servers and carry messages both
/// ways (v1 and v2 name events `$id:server` and reference them with their hashes; v3 onwards
/// by their hash; v12 names the room by its create event).
async fn every_room_version_federates(backend: Backend) {
    let a = TestServer::start_federating(backend, &[]).await;
    let b = TestServer::start_federating(backend, &[]).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let via = urlencode(&a.server_name);
    for version in ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"] {
        let room = alice.create_room(json!({ "preset": "public_chat", "room_version": version })).await;
        let (status, v) =
            bob.post(&format!("/_matrix/client/v3/join/{}?via={via}", urlencode(&room)), &json!({})).await;
        assert_eq!(status, 200, "v{version}: {v}");
        let from_a = format!("de A en v{version}");
        alice.send_text(&room, &from_a).await;
        sync_until(&bob, &format!("v{version} message on B"), |v| has_message(v, &room, &from_a)).await;
        let from_b = format!("de B en v{version}");
        bob.send_text(&room, &from_b).await;
        sync_until(&alice, &format!("v{version} message on A"), |v| has_message(v, &room, &from_b)).await;
    }
}

/// Server discovery through DNS: servers named without a port are reached where their SRV
/// records say (`_matrix-fed._tcp`, and the deprecated `_matrix._tcp`), asked of the DNS
/// servers of `federation.dns_servers`. B and C cannot resolve each other's names: each gets
/// the other's keys from A, its notary (`federation.trusted_key_servers`).
async fn servers_named_without_a_port_are_found_through_srv_records(backend: Backend) {
    let dns = Dns::start().await;
    let (b_port, c_port) = (free_port(), free_port());
    dns.srv("_matrix-fed._tcp.bureau.test", "localhost", b_port);
    dns.srv("_matrix._tcp.ancien.test", "localhost", c_port);
    let setting = dns.setting();
    let a = TestServer::start_federating(backend, &[("FEDERATION__DNS_SERVERS", &setting)]).await;
    let notary = format!("[\"{}\"]", a.server_name);
    let trust_a = [("FEDERATION__TRUSTED_KEY_SERVERS", notary.as_str())];
    let b = TestServer::start_federating_named(backend, "bureau.test", b_port, &trust_a).await;
    let c = TestServer::start_federating_named(backend, "ancien.test", c_port, &trust_a).await;
    let alice = a.register("alice").await;
    let room = alice.create_room(json!({ "preset": "private_chat" })).await;
    let via = urlencode(&a.server_name);
    for server in [&b, &c] {
        let user = server.register("agent").await;
        assert!(user.user_id.ends_with(&format!(":{}", server.server_name)), "{}", user.user_id);
        // A reaches the server through its SRV record (the invite), the server reaches A by
        // its name (an IP literal with a port).
        let (status, v) = alice.invite(&room, &user.user_id).await;
        assert_eq!(status, 200, "{}: {v}", server.server_name);
        sync_until(&user, "the invite", |v| v["rooms"]["invite"][&room].is_object()).await;
        let (status, v) =
            user.post(&format!("/_matrix/client/v3/join/{}?via={via}", urlencode(&room)), &json!({})).await;
        assert_eq!(status, 200, "{}: {v}", server.server_name);
        let body = format!("pour {}", server.server_name);
        alice.send_text(&room, &body).await;
        sync_until(&user, "A's message", |v| has_message(v, &room, &body)).await;
    }
    // A name nothing answers for is an error, not a wait: 502 from the other side's absence.
    let (status, v) = alice.invite(&room, "@personne:nulle-part.test").await;
    assert!(status == 502 || status == 404 || status == 403, "{status}: {v}");
}

/// Delegation through `.well-known`: a server named without a port (`localhost`) is reached where
/// `https://localhost/.well-known/matrix/server` says, here itself on port 443. One test for
/// both backends, one after the other: port 443 can be taken by one server at a time (the tests
/// run as root, as on CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_named_without_a_port_is_found_through_well_known() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        // Without a DNS answer: were `.well-known` not followed, port 8448 would be tried and fail.
        let dns = Dns::start().await;
        let setting = dns.setting();
        let a = TestServer::start_federating(backend, &[("FEDERATION__DNS_SERVERS", &setting)]).await;
        let mut b = TestServer::start_federating_named(backend, "localhost", 443, &[]).await;
        // A name with its port delegates nothing.
        assert_error(&a.client().get("/.well-known/matrix/server").await, 404, "M_NOT_FOUND");
        assert_eq!(b.client().ok(Method::GET, "/.well-known/matrix/server", None).await["m.server"], "localhost:443");

        let alice = a.register("alice").await;
        let bob = b.register("bob").await;
        assert_eq!(bob.user_id, "@bob:localhost");
        let room = alice.create_room(json!({ "preset": "private_chat" })).await;
        let (status, v) = alice.invite(&room, &bob.user_id).await;
        assert_eq!(status, 200, "{backend:?}: {v}");
        sync_until(&bob, "the invite", |v| v["rooms"]["invite"][&room].is_object()).await;
        let via = urlencode(&a.server_name);
        let (status, v) =
            bob.post(&format!("/_matrix/client/v3/join/{}?via={via}", urlencode(&room)), &json!({})).await;
        assert_eq!(status, 200, "{backend:?}: {v}");
        alice.send_text(&room, "par délégation").await;
        sync_until(&bob, "A's message", |v| has_message(v, &room, "par délégation")).await;
        b.kill().await;
    }
}

/// Unusable `[federation]` settings stop the server at start-up, with their reason.
#[tokio::test]
async fn unusable_federation_settings_stop_the_server_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(diplomatie_tests::binary())
        .env("DIPLOMATIE_DATA_DIR", dir.path())
        .env("DIPLOMATIE_LISTEN", "127.0.0.1:0")
        .env("DIPLOMATIE_FEDERATION__ENABLED", "true")
        .env("DIPLOMATIE_FEDERATION__DNS_SERVERS", "[\"pas-une-adresse\"]")
        .env("DIPLOMATIE_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("federation.dns_servers") && stderr.contains("pas-une-adresse"), "{stderr}");
}

/// `/v1/send_join` and `/v1/send_leave`, which the spec keeps beside `/v2/`: the same checks,
/// answered as `[200, body]`.
async fn a_server_joins_and_leaves_through_the_v1_endpoints(backend: Backend) {
    let other = FakeServer::new("partner.test");
    let a = start_with_config(backend, &other.pinned()).await;
    let alice = a.register("alice").await;
    let room = alice.create_room(json!({ "preset": "public_chat", "room_version": "12" })).await;
    let user = "@p:partner.test";
    let template =
        |kind: &str| format!("/_matrix/federation/v1/{kind}/{}/{}?ver=12", urlencode(&room), urlencode(user));
    for (make, send, membership) in [("make_join", "send_join", "join"), ("make_leave", "send_leave", "leave")] {
        let (status, v) = other.request(&a, Method::GET, &template(make), None, Signing::Good).await;
        assert_eq!(status, 200, "{make}: {v}");
        let (id, event) = other.sign(v["event"].clone());
        let path = format!("/_matrix/federation/v1/{send}/{}/{}", urlencode(&room), urlencode(&id));
        // Unsigned, or of another server's user: refused.
        let (status, v) = other.request(&a, Method::PUT, &path, Some(&event), Signing::None).await;
        assert_eq!((status, v["errcode"].as_str()), (401, Some("M_UNAUTHORIZED")), "{v}");
        let (status, v) = other.request(&a, Method::PUT, &path, Some(&json!([event])), Signing::Good).await;
        assert_eq!((status, v["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{v}");
        let (status, v) = other.request(&a, Method::PUT, &path, Some(&event), Signing::Good).await;
        assert_eq!(status, 200, "{send}: {v}");
        assert_eq!(v[0], 200, "{v}");
        if membership == "join" {
            assert!(v[1]["state"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"), "{v}");
            assert!(!v[1]["auth_chain"].as_array().unwrap().is_empty(), "{v}");
            // In the room, the server may ask for missing events: a body naming none asks for
            // nothing (as Synapse), a malformed one is refused.
            let missing = format!("/_matrix/federation/v1/get_missing_events/{}", urlencode(&room));
            let (status, v) = other.request(&a, Method::POST, &missing, Some(&json!({})), Signing::Good).await;
            assert_eq!((status, &v), (200, &json!({ "events": [] })));
            let body = json!({ "earliest_events": [], "latest_events": [id], "limit": 3 });
            let (status, v) = other.request(&a, Method::POST, &missing, Some(&body), Signing::Good).await;
            assert_eq!((status, v["events"].as_array().map(Vec::len)), (200, Some(3)), "{v}");
            let body = json!({ "latest_events": "pas une liste" });
            let (status, v) = other.request(&a, Method::POST, &missing, Some(&body), Signing::Good).await;
            assert_eq!((status, v["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{v}");
        } else {
            assert_eq!(v[1], json!({}));
        }
        assert_eq!(room_state(&alice, &room, "m.room.member", user).await.1["membership"], membership);
    }
}

/// Once its sender's account is erased, an event reaches other servers redacted (`/event`,
/// `/backfill`).
async fn an_erased_accounts_events_reach_other_servers_redacted(backend: Backend) {
    let other = FakeServer::new("partner.test");
    let a = start_with_config(backend, &other.pinned()).await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat", "room_version": "12" })).await;
    bob.join(&room).await;
    let user = "@p:partner.test";
    let make = format!("/_matrix/federation/v1/make_join/{}/{}?ver=12", urlencode(&room), urlencode(user));
    let (status, v) = other.request(&a, Method::GET, &make, None, Signing::Good).await;
    assert_eq!(status, 200, "{v}");
    let (id, event) = other.sign(v["event"].clone());
    let send = format!("/_matrix/federation/v2/send_join/{}/{}", urlencode(&room), urlencode(&id));
    let (status, v) = other.request(&a, Method::PUT, &send, Some(&event), Signing::Good).await;
    assert_eq!(status, 200, "{v}");
    let sent = alice.send_text(&room, "à effacer").await;
    let path = format!("/_matrix/federation/v1/event/{}", urlencode(&sent));
    let backfill = format!("/_matrix/federation/v1/backfill/{}?v={}&limit=1", urlencode(&room), urlencode(&sent));
    let (status, v) = other.request(&a, Method::GET, &path, None, Signing::Good).await;
    assert_eq!((status, v["pdus"][0]["content"]["body"].as_str()), (200, Some("à effacer")), "{v}");
    let (_, uia) = alice.post("/_matrix/client/v3/account/deactivate", &json!({ "erase": true })).await;
    let auth = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "correct horse", "session": uia["session"] });
    alice
        .ok(Method::POST, "/_matrix/client/v3/account/deactivate", Some(&json!({ "auth": auth, "erase": true })))
        .await;
    for path in [path, backfill] {
        let (status, v) = other.request(&a, Method::GET, &path, None, Signing::Good).await;
        assert_eq!(status, 200, "{v}");
        let pdu = &v["pdus"][0];
        assert_eq!((pdu["event_id"].as_str(), pdu["type"].as_str()), (None, Some("m.room.message")), "{v}");
        assert_eq!(pdu["content"], json!({}), "{path}: {v}");
    }
}

/// As a notary, a server answers another's keys signed by both; what it fetched stays
/// answerable once that server is gone, and asked again with a validity it cannot meet.
async fn the_notary_answers_what_it_fetched_when_the_server_is_gone(backend: Backend) {
    let notary = TestServer::start_federating(backend, &[]).await;
    let mut origin = TestServer::start_federating(backend, &[]).await;
    let origin_name = origin.server_name.clone();
    let query = |min: Option<u64>| {
        let mut body = json!({ "server_keys": { origin_name.clone(): {} } });
        if let Some(min) = min {
            body["server_keys"][&origin_name] = json!({ "ed25519:x": { "minimum_valid_until_ts": min } });
        }
        let url = format!("{}/_matrix/key/v2/query", notary.base);
        async move {
            let r = reqwest::Client::new().post(url).json(&body).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let first = query(None).await;
    let keys = &first["server_keys"][0];
    assert_eq!(keys["server_name"], origin_name.as_str(), "{first}");
    assert!(keys["signatures"][&origin_name].is_object() && keys["signatures"][&notary.server_name].is_object());
    origin.kill().await;
    let far = 4_000_000_000_000u64;
    for min in [None, Some(far)] {
        let again = query(min).await;
        assert_eq!(again["server_keys"][0]["verify_keys"], keys["verify_keys"], "{again}");
    }
    let url = format!("{}/_matrix/key/v2/query/{}", notary.base, urlencode("nowhere.invalid"));
    let r: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    assert_eq!(r, json!({ "server_keys": [] }));
}

/// An invite to a room whose members all left: no server is in the room any more, so the one
/// that holds its state writes the rejection (a federating server would otherwise look for
/// another to take it, and find none).
async fn an_invite_to_a_room_everyone_left_can_be_rejected(backend: Backend) {
    let a = TestServer::start_federating(backend, &[]).await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let room = alice.create_room(json!({ "preset": "private_chat" })).await;
    assert_eq!(alice.invite(&room, &bob.user_id).await.0, 200);
    alice.ok(Method::POST, &format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&json!({}))).await;
    bob.ok(Method::POST, &format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&json!({}))).await;
    let s = bob.sync(None, "timeout=0").await;
    assert!(s["rooms"]["invite"].get(&room).is_none(), "{s}");
}

/// An invite from a server that has gone away is still refused: the refusal is kept here
/// alone (an out-of-band leave), and the room shows as left.
async fn an_invite_from_a_server_gone_away_is_refused_here(backend: Backend) {
    let mut a = TestServer::start_federating(backend, &[]).await;
    let b = TestServer::start_federating(backend, &[]).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "private_chat" })).await;
    assert_eq!(alice.invite(&room, &bob.user_id).await.0, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let since = loop {
        let s = bob.sync(None, "timeout=0").await;
        if s["rooms"]["invite"].get(&room).is_some() {
            break s["next_batch"].as_str().unwrap().to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "the invite did not arrive: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    a.kill().await;
    bob.ok(Method::POST, &format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&json!({}))).await;
    let s = bob.sync(Some(&since), "timeout=0").await;
    let left = &s["rooms"]["leave"][&room]["timeline"]["events"];
    let leave = left.as_array().and_then(|l| l.last()).cloned().unwrap_or_default();
    assert_eq!(
        (leave["type"].as_str(), leave["content"]["membership"].as_str()),
        (Some("m.room.member"), Some("leave")),
        "{s}"
    );
    assert_eq!(leave["sender"], bob.user_id.as_str());
    let s = bob.sync(None, "timeout=0").await;
    assert!(s["rooms"]["invite"].get(&room).is_none(), "{s}");
    // Joining it again is not possible from here: the room is not known beyond the invite.
    assert!(bob.join(&room).await.0 >= 400);
}

/// Users of one server joining, all at once, a room of another server theirs is not in yet:
/// every join succeeds (the first goes through the other server, the others join here).
async fn users_of_one_server_join_a_remote_room_at_once(backend: Backend) {
    let a = TestServer::start_federating(backend, &[]).await;
    let b = TestServer::start_federating(backend, &[]).await;
    let alice = a.register("alice").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let mut joiners = Vec::new();
    for i in 0..8 {
        joiners.push(b.register(&format!("joiner{i}")).await);
    }
    let via = format!("?via={}", urlencode(&a.server_name));
    let path = format!("/_matrix/client/v3/join/{}{via}", urlencode(&room));
    let empty = json!({});
    let answers = futures::future::join_all(joiners.iter().map(|j| j.post(&path, &empty))).await;
    for (status, v) in &answers {
        assert_eq!(*status, 200, "{v}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let members = alice.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/joined_members"), None).await;
        if members["joined"].as_object().map_or(0, |m| m.len()) == 9 {
            break;
        }
        assert!(Instant::now() < deadline, "{members}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
