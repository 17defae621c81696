//! Federation between two instances of this server on loopback (server-server spec): each
//! serves HTTPS on its own port with a self-signed certificate, and is named after it.

use std::time::{Duration, Instant};

use diplomatie_tests::{backend_tests, urlencode, Backend, Client, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

backend_tests!(two_servers_share_a_room);

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
