//! Push notifications (client-server spec, "Push Notifications"): the default push rules and
//! the push rules API, notification and highlight counts in `/sync` (per room and per thread),
//! `/notifications`, and pushers delivering to a push gateway with retries.

use std::time::Duration;

use diplomatie_tests::{assert_error, backend_tests, urlencode, Backend, Client, TestServer};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::mpsc;

backend_tests!(
    push_rules_start_from_the_spec_defaults_and_change_through_the_api,
    sync_counts_notifications_and_highlights_until_read,
    pushers_deliver_to_the_gateway_and_retry,
    many_members_join_and_talk_at_once,
    each_member_keeps_their_own_outcome,
    an_invite_is_listed_whatever_rooms_the_invitee_is_in,
    bodies_without_mentions_highlight_by_name,
    an_invite_from_another_server_is_pushed_with_the_rooms_name,
);

async fn push_rules_start_from_the_spec_defaults_and_change_through_the_api(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;

    let all = alice.ok(Method::GET, "/_matrix/client/v3/pushrules/", None).await;
    let overrides: Vec<&str> =
        all["global"]["override"].as_array().unwrap().iter().map(|r| r["rule_id"].as_str().unwrap()).collect();
    // The server's crisis alert rule comes first (it notifies through the master rule), then
    // the spec's.
    assert_eq!(overrides[0], ".fr.diplomatie.crisis.alert");
    assert_eq!(overrides[1], ".m.rule.master");
    assert!(overrides.contains(&".m.rule.is_user_mention"));
    assert!(overrides.contains(&".m.rule.is_room_mention"));
    let underrides = all["global"]["underride"].as_array().unwrap();
    assert!(underrides.iter().any(|r| r["rule_id"] == ".m.rule.encrypted_room_one_to_one"));
    // The legacy name-matching rules, as Synapse keeps them (clients' settings toggle them):
    // the display name right after the intentional user mention, the localpart as content.
    let mention = overrides.iter().position(|r| *r == ".m.rule.is_user_mention").unwrap();
    assert_eq!(overrides[mention + 1], ".m.rule.contains_display_name");
    assert_eq!(all["global"]["content"][0]["rule_id"], ".m.rule.contains_user_name");
    assert_eq!(all["global"]["content"][0]["pattern"], "alice");
    let toggle = "/_matrix/client/v3/pushrules/global/content/.m.rule.contains_user_name/enabled";
    alice.ok(Method::PUT, toggle, Some(&json!({ "enabled": true }))).await;
    // The global scope alone; paths the spec does not have answer as Synapse does: `/pushrules`
    // without its slash is unknown (404), a malformed path below it is a bad request (400).
    assert_eq!(alice.ok(Method::GET, "/_matrix/client/v3/pushrules/global/", None).await, all["global"]);
    assert_error(&alice.get("/_matrix/client/v3/pushrules").await, 404, "M_UNRECOGNIZED");
    for path in ["global", "global/room", "not_a_scope/", "global/not_a_template/", "global/override/.m.rule.master/x"]
    {
        assert_error(&alice.get(&format!("/_matrix/client/v3/pushrules/{path}")).await, 400, "M_UNRECOGNIZED");
    }
    for path in ["", "global", "global/", "global/room", "global/room/", "global/override/.m.rule.master/x"] {
        let answer = alice.put(&format!("/_matrix/client/v3/pushrules/{path}"), &json!({ "actions": [] })).await;
        assert_eq!(answer.0, 400, "PUT {path}: {}", answer.1);
    }
    // An initial sync shows them as account data.
    let sync = alice.sync(None, "timeout=0").await;
    let event = sync["account_data"]["events"].as_array().unwrap().iter().find(|e| e["type"] == "m.push_rules");
    assert_eq!(event.unwrap()["content"]["global"], all["global"]);
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    // A content rule: created, read, disabled, given other actions, deleted.
    let rule = "/_matrix/client/v3/pushrules/global/content/crise";
    alice.ok(Method::PUT, rule, Some(&json!({ "pattern": "crise", "actions": ["notify"] }))).await;
    let got = alice.ok(Method::GET, rule, None).await;
    assert_eq!(
        (got["pattern"].as_str(), got["enabled"].as_bool(), got["default"].as_bool()),
        (Some("crise"), Some(true), Some(false))
    );
    alice.ok(Method::PUT, &format!("{rule}/enabled"), Some(&json!({ "enabled": false }))).await;
    assert_eq!(alice.ok(Method::GET, &format!("{rule}/enabled"), None).await["enabled"], false);
    alice.ok(Method::PUT, &format!("{rule}/actions"), Some(&json!({ "actions": [] }))).await;
    assert_eq!(alice.ok(Method::GET, &format!("{rule}/actions"), None).await["actions"], json!([]));
    // The change reaches clients through /sync.
    let sync = alice.sync(Some(&since), "timeout=0").await;
    let event =
        sync["account_data"]["events"].as_array().unwrap().iter().find(|e| e["type"] == "m.push_rules").cloned();
    let content = event.expect("m.push_rules in the incremental sync")["content"]["global"]["content"].clone();
    assert!(content.as_array().unwrap().iter().any(|r| r["rule_id"] == "crise" && r["enabled"] == false));
    // Ordering: `before` places a rule ahead of another user rule.
    alice
        .ok(
            Method::PUT,
            "/_matrix/client/v3/pushrules/global/content/urgent?before=crise",
            Some(&json!({ "pattern": "urgent", "actions": ["notify"] })),
        )
        .await;
    let ids: Vec<String> = alice.ok(Method::GET, "/_matrix/client/v3/pushrules/", None).await["global"]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(&ids[..2], ["urgent", "crise"]);
    alice.ok(Method::DELETE, rule, None).await;
    assert_error(&alice.get(rule).await, 404, "M_NOT_FOUND");

    // Bad input.
    let bad = |path: &str| format!("/_matrix/client/v3/pushrules/global/{path}");
    assert_error(
        &alice.put(&bad("content/.m.mine"), &json!({ "pattern": "x", "actions": [] })).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &alice.put(&bad("content/x?before=nothere"), &json!({ "pattern": "x", "actions": [] })).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(&alice.delete(&bad("override/.m.rule.master")).await, 400, "M_INVALID_PARAM");
    assert_error(
        &alice.put(&bad("override/.m.rule.nope/enabled"), &json!({ "enabled": true })).await,
        404,
        "M_NOT_FOUND",
    );
    let missing = alice.put(&bad("content/nopattern"), &json!({ "actions": [] })).await;
    assert_eq!(missing.0, 400, "{}", missing.1);
    assert!(["M_BAD_JSON", "M_MISSING_PARAM"].contains(&missing.1["errcode"].as_str().unwrap()));
    let bad_kind = alice.put(&bad("sideways/x"), &json!({ "actions": [] })).await;
    assert_eq!(bad_kind.0, 400, "{}", bad_kind.1);
    // Push rules are account data the server manages.
    let path = format!("/_matrix/client/v3/user/{}/account_data/m.push_rules", urlencode(&alice.user_id));
    assert_error(&alice.put(&path, &json!({ "global": {} })).await, 405, "M_BAD_JSON");
    assert_eq!(alice.ok(Method::GET, &path, None).await["global"]["content"][0]["rule_id"], "urgent");
}

/// A message without `m.mentions` (older clients, bridges) highlights the members whose
/// localpart or display name it holds as a word; one with `m.mentions` only those it names
/// there. A member whose rules were changed keeps the legacy rules too.
async fn bodies_without_mentions_highlight_by_name(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    carol.join(&room).await;
    let name = format!("/_matrix/client/v3/profile/{}/displayname", urlencode(&carol.user_id));
    carol.ok(Method::PUT, &name, Some(&json!({ "displayname": "Consule" }))).await;
    // Carol changes a rule: her set is stored, and still holds the legacy rules.
    let rule = "/_matrix/client/v3/pushrules/global/content/crise";
    carol.ok(Method::PUT, rule, Some(&json!({ "pattern": "crise", "actions": ["notify"] }))).await;
    send(&alice, &room, json!({ "msgtype": "m.text", "body": "Bob, la Consule arrive" })).await;
    send(&alice, &room, json!({ "msgtype": "m.text", "body": "bobine et consulat" })).await;
    send(&alice, &room, json!({ "msgtype": "m.text", "body": "bob", "m.mentions": {} })).await;
    assert_eq!(counts(&bob.sync(None, "timeout=0").await, &room), (3, 1));
    assert_eq!(counts(&carol.sync(None, "timeout=0").await, &room), (3, 1));
}

fn counts(sync: &Value, room: &str) -> (u64, u64) {
    let n = &sync["rooms"]["join"][room]["unread_notifications"];
    (n["notification_count"].as_u64().unwrap(), n["highlight_count"].as_u64().unwrap())
}

async fn send(c: &Client, room: &str, content: Value) -> String {
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{}", rand_txn());
    c.ok(Method::PUT, &path, Some(&content)).await["event_id"].as_str().unwrap().to_owned()
}

fn rand_txn() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("t{}", N.fetch_add(1, Ordering::Relaxed))
}

async fn sync_counts_notifications_and_highlights_until_read(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    bob.ok(
        Method::PUT,
        &format!("/_matrix/client/v3/profile/{}/displayname", bob.user_id),
        Some(&json!({ "displayname": "Bob Martin" })),
    )
    .await;
    // Three members: the one-to-one rules do not apply.
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&room).await.0, 200);
    let dave = server.register("dave").await;
    assert_eq!(dave.join(&room).await.0, 200);

    send(&alice, &room, json!({ "msgtype": "m.text", "body": "bonjour" })).await;
    send(&alice, &room, json!({ "msgtype": "m.text", "body": "réunion à 10h" })).await;
    let sync = bob.sync(None, "timeout=0").await;
    assert_eq!(counts(&sync, &room), (2, 0));
    // Intentional mentions highlight: of the user, and of the room by someone allowed to.
    // His display name in a body that has `m.mentions` does not (the legacy rules stand aside).
    send(&alice, &room, json!({ "msgtype": "m.text", "body": "Bob Martin, pouvez-vous relire ?", "m.mentions": {} }))
        .await;
    let mention =
        send(&alice, &room, json!({ "msgtype": "m.text", "body": "toi", "m.mentions": { "user_ids": [bob.user_id] } }))
            .await;
    let everyone =
        send(&alice, &room, json!({ "msgtype": "m.text", "body": "tous", "m.mentions": { "room": true } })).await;
    send(&dave, &room, json!({ "msgtype": "m.text", "body": "moi aussi tous", "m.mentions": { "room": true } })).await;
    // Notices do not notify; one's own messages do not either.
    send(&alice, &room, json!({ "msgtype": "m.notice", "body": "bot" })).await;
    send(&bob, &room, json!({ "msgtype": "m.text", "body": "moi" })).await;
    let sync = bob.sync(None, "timeout=0").await;
    assert_eq!(counts(&sync, &room), (6, 2));
    // Alice's own messages notify nobody but the others.
    assert_eq!(counts(&alice.sync(None, "timeout=0").await, &room), (2, 0));

    // /notifications: newest first, highlights alone, in pages.
    let list = bob.ok(Method::GET, "/_matrix/client/v3/notifications", None).await;
    let list = list["notifications"].as_array().unwrap().clone();
    assert_eq!(list.len(), 6);
    assert_eq!(list[1]["event"]["event_id"], everyone.as_str());
    assert_eq!(list[2]["event"]["event_id"], mention.as_str());
    assert_eq!(list[0]["room_id"], room.as_str());
    assert_eq!(list[0]["read"], false);
    assert!(list.iter().all(|n| n.get("profile_tag") == Some(&Value::Null)), "as Synapse: {list:?}");
    assert!(list[2]["actions"].as_array().unwrap().iter().any(|a| a["set_tweak"] == "highlight"));
    // Dave may not notify the whole room (power 0 < notifications.room 50): a plain notification.
    assert!(!list[0]["actions"].as_array().unwrap().iter().any(|a| a["set_tweak"] == "highlight"));
    let only = bob.ok(Method::GET, "/_matrix/client/v3/notifications?only=highlight", None).await;
    assert_eq!(only["notifications"].as_array().unwrap().len(), 2);
    let page = bob.ok(Method::GET, "/_matrix/client/v3/notifications?limit=4", None).await;
    assert_eq!(page["notifications"].as_array().unwrap().len(), 4);
    let next = page["next_token"].as_str().unwrap();
    let rest = bob.ok(Method::GET, &format!("/_matrix/client/v3/notifications?limit=4&from={next}"), None).await;
    assert_eq!(rest["notifications"].as_array().unwrap().len(), 2);
    assert!(rest.get("next_token").is_none());
    assert_error(&bob.get("/_matrix/client/v3/notifications?from=abc").await, 400, "M_INVALID_PARAM");

    // A read receipt on the latest clears the counts; the list says they were read.
    let latest = list[0]["event"]["event_id"].as_str().unwrap();
    bob.ok(
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{}", urlencode(latest)),
        Some(&json!({})),
    )
    .await;
    assert_eq!(counts(&bob.sync(None, "timeout=0").await, &room), (0, 0));
    let list = bob.ok(Method::GET, "/_matrix/client/v3/notifications", None).await;
    assert!(list["notifications"].as_array().unwrap().iter().all(|n| n["read"] == true));

    // Threads are counted apart when the client asks.
    let root = send(&alice, &room, json!({ "msgtype": "m.text", "body": "fil" })).await;
    send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "réponse", "m.relates_to": { "rel_type": "m.thread", "event_id": root } }),
    )
    .await;
    let filter = urlencode(&json!({ "room": { "timeline": { "unread_thread_notifications": true } } }).to_string());
    let sync = bob.sync(None, &format!("timeout=0&filter={filter}")).await;
    assert_eq!(counts(&sync, &room), (1, 0));
    let threads = &sync["rooms"]["join"][room.as_str()]["unread_thread_notifications"];
    assert_eq!(threads[root.as_str()]["notification_count"], 1);
    assert_eq!(counts(&bob.sync(None, "timeout=0").await, &room), (2, 0));

    // A room rule with no actions silences the room.
    bob.ok(
        Method::PUT,
        &format!("/_matrix/client/v3/pushrules/global/room/{}", urlencode(&room)),
        Some(&json!({ "actions": [] })),
    )
    .await;
    send(&alice, &room, json!({ "msgtype": "m.text", "body": "silence" })).await;
    assert_eq!(counts(&bob.sync(None, "timeout=0").await, &room), (2, 0));

    // An invite notifies its invitee.
    alice.invite(&room, &carol.user_id).await;
    let list = carol.ok(Method::GET, "/_matrix/client/v3/notifications", None).await;
    assert_eq!(list["notifications"][0]["event"]["type"], "m.room.member");
    assert_eq!(list["notifications"][0]["event"]["state_key"], carol.user_id.as_str());
}

/// A push gateway on loopback: answers each request with the next status of `script` (then
/// 200), `rejected` naming `reject` when it is set, and hands every body it got to the test.
async fn gateway(script: Vec<u16>, reject: Option<String>) -> (u16, mpsc::UnboundedReceiver<Value>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut script = script.into_iter();
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                let n = socket.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break Some(buf[end + 4..end + 4 + len].to_vec());
                }
            };
            let Some(body) = body else { continue };
            let _ = tx.send(serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null));
            let status = script.next().unwrap_or(200);
            let answer = json!({ "rejected": reject.iter().collect::<Vec<_>>() }).to_string();
            let response = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        }
    });
    (port, rx)
}

async fn next_push(rx: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.expect("the gateway was called").unwrap()
}

fn pusher(port: u16, pushkey: &str) -> Value {
    json!({
        "kind": "http", "app_id": "fr.diplomatie.mobile", "pushkey": pushkey, "app_display_name": "Diplomatie",
        "device_display_name": "Téléphone", "lang": "fr",
        "data": { "url": format!("http://127.0.0.1:{port}/_matrix/push/v1/notify") },
    })
}

async fn pushers_deliver_to_the_gateway_and_retry(backend: Backend) {
    let mut server = TestServer::start(backend, &[("PUSH__IP_RANGE_ALLOWLIST", "[\"127.0.0.1/32\"]")]).await;
    let alice = server.register("alice").await;
    let mut bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat", "name": "Crise" })).await;
    assert_eq!(bob.join(&room).await.0, 200);

    // The first attempt fails: the server tries again.
    let (port, mut pushes) = gateway(vec![500], None).await;
    bob.ok(Method::POST, "/_matrix/client/v3/pushers/set", Some(&pusher(port, "key-1"))).await;
    let listed = bob.ok(Method::GET, "/_matrix/client/v3/pushers", None).await;
    assert_eq!(listed["pushers"][0]["pushkey"], "key-1");
    assert_eq!(listed["pushers"][0]["data"]["url"], format!("http://127.0.0.1:{port}/_matrix/push/v1/notify"));

    let event = send(&alice, &room, json!({ "msgtype": "m.text", "body": "alerte" })).await;
    let first = next_push(&mut pushes).await;
    let retried = next_push(&mut pushes).await;
    assert_eq!(first, retried, "the same notification is sent again");
    let n = &retried["notification"];
    assert_eq!(n["event_id"], event.as_str());
    assert_eq!(n["room_id"], room.as_str());
    assert_eq!(n["type"], "m.room.message");
    assert_eq!(n["sender"], alice.user_id.as_str());
    assert_eq!(n["room_name"], "Crise");
    assert_eq!(n["content"]["body"], "alerte");
    assert_eq!(n["counts"]["unread"], 1);
    assert_eq!(n["devices"][0]["pushkey"], "key-1");
    assert_eq!(n["devices"][0]["app_id"], "fr.diplomatie.mobile");
    assert!(n["devices"][0]["data"].get("url").is_none(), "the url stays with the server");

    // Pushers survive a restart; delivery resumes after the last one delivered.
    server.kill().await;
    server.launch().await;
    bob.base = server.base.clone();
    let mut alice = alice;
    alice.base = server.base.clone();
    let second = send(&alice, &room, json!({ "msgtype": "m.text", "body": "encore" })).await;
    // Delivery is at least once: a notification whose success was not recorded before the
    // kill comes again first.
    let mut n = next_push(&mut pushes).await;
    while n["notification"]["event_id"] == event.as_str() {
        n = next_push(&mut pushes).await;
    }
    assert_eq!(n["notification"]["event_id"], second.as_str());
    assert_eq!(n["notification"]["id"], second.as_str(), "the older name gateways read");
    assert_eq!(n["notification"]["counts"]["unread"], 2);

    // Reading changes the badge: the devices are told, with counts only, once.
    let receipt = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{}", urlencode(&second));
    bob.ok(Method::POST, &receipt, Some(&json!({}))).await;
    let mut badge = next_push(&mut pushes).await;
    while badge["notification"].get("event_id").is_some() {
        badge = next_push(&mut pushes).await;
    }
    assert_eq!(badge["notification"]["counts"]["unread"], 0, "{badge}");
    assert_eq!(badge["notification"]["devices"][0]["pushkey"], "key-1");
    bob.ok(Method::POST, &receipt, Some(&json!({}))).await;
    // A receipt never moves back: one for the older message leaves the room read.
    let older = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{}", urlencode(&event));
    bob.ok(Method::POST, &older, Some(&json!({}))).await;
    let v = bob.sync(None, "").await;
    assert_eq!(v["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 0, "{v}");

    // An invite notifies its invitee, with the membership; a room without a name is named by
    // its canonical alias.
    let named = alice.create_room(json!({ "room_alias_name": "veille" })).await;
    assert_eq!(alice.invite(&named, &bob.user_id).await.0, 200);
    let invite = next_push(&mut pushes).await;
    let n = &invite["notification"];
    assert_eq!((n["type"].as_str(), n["membership"].as_str()), (Some("m.room.member"), Some("invite")), "{invite}");
    assert_eq!(n["user_is_target"], true);
    assert_eq!(n["room_name"], "#veille:localhost");
    assert_eq!(n["counts"]["unread"], 1, "the unchanged badge was not sent again before: {invite}");

    // Bad input.
    let mut bad = pusher(port, "k");
    bad["data"]["url"] = json!(format!("http://127.0.0.1:{port}/elsewhere"));
    assert_error(&bob.post("/_matrix/client/v3/pushers/set", &bad).await, 400, "M_INVALID_PARAM");
    let mut email = pusher(port, "k");
    email["kind"] = json!("email");
    assert_eq!(bob.post("/_matrix/client/v3/pushers/set", &email).await.0, 400);
    let mut long = pusher(port, "k");
    long["app_id"] = json!("a".repeat(65));
    assert_error(&bob.post("/_matrix/client/v3/pushers/set", &long).await, 400, "M_INVALID_PARAM");

    // Deleted with `kind: null`.
    let delete = json!({ "kind": null, "app_id": "fr.diplomatie.mobile", "pushkey": "key-1" });
    bob.ok(Method::POST, "/_matrix/client/v3/pushers/set", Some(&delete)).await;
    assert_eq!(bob.ok(Method::GET, "/_matrix/client/v3/pushers", None).await["pushers"], json!([]));

    // A gateway that rejects the push key gets the pusher removed.
    let (port, mut pushes) = gateway(vec![], Some("key-2".into())).await;
    bob.ok(Method::POST, "/_matrix/client/v3/pushers/set", Some(&pusher(port, "key-2"))).await;
    send(&alice, &room, json!({ "msgtype": "m.text", "body": "dernier" })).await;
    next_push(&mut pushes).await;
    let mut gone = false;
    for _ in 0..100 {
        if bob.ok(Method::GET, "/_matrix/client/v3/pushers", None).await["pushers"] == json!([]) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the rejected pusher is removed");
}

/// An invite from another server, to a room this server is not in: the push names the room
/// from the state the inviter showed.
async fn an_invite_from_another_server_is_pushed_with_the_rooms_name(backend: Backend) {
    let a = TestServer::start_federating(backend, &[]).await;
    let b = TestServer::start_federating(backend, &[("PUSH__IP_RANGE_ALLOWLIST", "[\"127.0.0.1/32\"]")]).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let (port, mut pushes) = gateway(vec![], None).await;
    bob.ok(Method::POST, "/_matrix/client/v3/pushers/set", Some(&pusher(port, "key-1"))).await;
    let room = alice.create_room(json!({ "preset": "private_chat", "name": "Cellule de crise" })).await;
    assert_eq!(alice.invite(&room, &bob.user_id).await.0, 200);
    let n = next_push(&mut pushes).await["notification"].clone();
    assert_eq!((n["type"].as_str(), n["membership"].as_str()), (Some("m.room.member"), Some("invite")), "{n}");
    assert_eq!(n["room_name"], "Cellule de crise", "{n}");
    assert_eq!(n["user_is_target"], true);
}

/// Notifications are computed for every write; under many concurrent joins and sends (each
/// join also writes outside the room writer) nothing may stall or fail. Evaluating push rules
/// inside the events' transaction once deadlocked SQLite's connection pool here.
async fn many_members_join_and_talk_at_once(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let rooms = [
        alice.create_room(json!({ "preset": "public_chat" })).await,
        alice.create_room(json!({ "preset": "public_chat" })).await,
    ];
    let mut users = Vec::new();
    for i in 0..80 {
        users.push(server.register(&format!("agent{i}")).await);
    }
    let mut tasks = Vec::new();
    for (i, user) in users.into_iter().enumerate() {
        let room = rooms[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let joined = user.join(&room).await;
            assert_eq!(joined.0, 200, "{}", joined.1);
            send(&user, &room, json!({ "msgtype": "m.text", "body": format!("présent {i}") })).await;
        }));
    }
    for t in tasks {
        t.await.expect("every join and send succeeds");
    }
    // Everyone's messages notify Alice.
    let list = alice.ok(Method::GET, "/_matrix/client/v3/notifications?limit=100", None).await;
    let messages =
        list["notifications"].as_array().unwrap().iter().filter(|n| n["event"]["type"] == "m.room.message").count();
    assert_eq!(messages, 80);
}

/// Most members share an event's outcome (written once per event); those with rules of their
/// own, those it names and those who joined later each get theirs, in `/sync` as it runs and
/// after a restart, when the counts are read back from the database.
async fn each_member_keeps_their_own_outcome(backend: Backend) {
    let mut server = TestServer::start(backend, &[]).await;
    let mut alice = server.register("alice").await;
    let mut bob = server.register("bob").await;
    let mut carol = server.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&room).await.0, 200);
    assert_eq!(carol.join(&room).await.0, 200);
    // Carol mutes the room with a room rule of her own.
    carol
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/pushrules/global/room/{}", urlencode(room.as_str())),
            Some(&json!({ "actions": [] })),
        )
        .await;
    // Counts are asked for (and cached) before the messages, then kept up to date.
    assert_eq!(counts(&bob.sync(None, "timeout=0").await, &room), (0, 0));
    assert_eq!(counts(&carol.sync(None, "timeout=0").await, &room), (0, 0));
    send(&alice, &room, json!({ "msgtype": "m.text", "body": "un" })).await;
    send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "carol ?", "m.mentions": { "user_ids": [carol.user_id] } }),
    )
    .await;
    assert_eq!(counts(&bob.sync(None, "timeout=0").await, &room), (2, 0));
    // Muted, but the mention still reaches her: override rules come before room rules.
    let carol_counts = counts(&carol.sync(None, "timeout=0").await, &room);
    assert_eq!(carol_counts, (1, 1), "only the mention reaches her");
    // Dave joins after two messages: they are not his.
    let mut dave = server.register("dave").await;
    assert_eq!(dave.join(&room).await.0, 200);
    send(&alice, &room, json!({ "msgtype": "m.text", "body": "trois" })).await;
    assert_eq!(counts(&dave.sync(None, "timeout=0").await, &room), (1, 0));
    assert_eq!(counts(&bob.sync(None, "timeout=0").await, &room), (3, 0));
    let list = dave.ok(Method::GET, "/_matrix/client/v3/notifications", None).await;
    assert_eq!(list["notifications"].as_array().unwrap().len(), 1);

    // After a restart the same counts come from the database.
    server.kill().await;
    server.launch().await;
    for c in [&mut alice, &mut bob, &mut carol, &mut dave] {
        c.base = server.base.clone();
    }
    assert_eq!(counts(&bob.sync(None, "timeout=0").await, &room), (3, 0));
    assert_eq!(counts(&carol.sync(None, "timeout=0").await, &room), (1, 1));
    assert_eq!(counts(&dave.sync(None, "timeout=0").await, &room), (1, 0));
    assert_eq!(counts(&alice.sync(None, "timeout=0").await, &room), (0, 0));
    let list = bob.ok(Method::GET, "/_matrix/client/v3/notifications?limit=2", None).await;
    assert_eq!(list["notifications"].as_array().unwrap().len(), 2);
    let next = list["next_token"].as_str().unwrap();
    let rest = bob.ok(Method::GET, &format!("/_matrix/client/v3/notifications?from={next}"), None).await;
    assert_eq!(rest["notifications"].as_array().unwrap().len(), 1);
}

/// An invite is the invitee's own notification, listed by `/notifications` wherever the invitee
/// already is (a member of exactly one room used to lose it).
async fn an_invite_is_listed_whatever_rooms_the_invitee_is_in(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let lobby = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&lobby).await.0, 200);
    let private = alice.create_room(json!({})).await;
    assert_eq!(alice.invite(&private, &bob.user_id).await.0, 200);
    let list = bob.ok(Method::GET, "/_matrix/client/v3/notifications", None).await;
    let list = list["notifications"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["room_id"], private.as_str());
    assert_eq!(list[0]["event"]["type"], "m.room.member");
}
