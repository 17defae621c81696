//! Retention and legal holds, black box: the purge empties exactly what expired (by the room's
//! own policy, by `m.room.retention`), never state, never what a hold covers, deletes the files
//! and the search entries of what it empties, and records each run; a hold keeps a redacted
//! event's original for the archive and refuses the erasure of a held user; a purge stopped in
//! the middle finishes after a restart, each event emptied once.

use std::time::Duration;

use diplomatie_tests::{assert_error, backend_tests, urlencode, Backend, Client, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

backend_tests!(
    the_purge_empties_what_expired_and_nothing_on_hold,
    a_hold_keeps_originals_and_refuses_erasure,
    a_purge_stopped_in_the_middle_finishes_after_a_restart,
);

const PURGE: &str = "/_diplomatie/admin/v1/retention/purge";
const HOLDS: &str = "/_diplomatie/admin/v1/holds";

fn policy_path(room: &str) -> String {
    format!("/_diplomatie/admin/v1/rooms/{room}/retention")
}

async fn event(c: &Client, room: &str, id: &str) -> Value {
    c.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/event/{}", urlencode(id)), None).await
}

/// The rooms where a search finds `term`.
async fn found_in(c: &Client, term: &str) -> Vec<String> {
    let body = json!({ "search_categories": { "room_events": { "search_term": term } } });
    let v = c.ok(Method::POST, "/_matrix/client/v3/search", Some(&body)).await;
    let mut rooms: Vec<String> = v["search_categories"]["room_events"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["result"]["room_id"].as_str().unwrap().to_owned())
        .collect();
    rooms.sort();
    rooms.dedup();
    rooms
}

async fn the_purge_empties_what_expired_and_nothing_on_hold(backend: Backend) {
    let server = TestServer::start(backend, &[("RETENTION__BATCH_SIZE", "5")]).await;
    let root = server.admin().await;
    let alice = server.register("alice").await;
    let room_a = alice.create_room(json!({ "name": "A" })).await;
    let room_b = alice.create_room(json!({ "name": "B" })).await;
    let room_c = alice.create_room(json!({ "name": "C" })).await;
    let room_d = alice.create_room(json!({ "name": "D" })).await;
    for room in [&room_a, &room_b] {
        let set =
            root.ok(Method::PUT, &policy_path(room), Some(&json!({ "messages_ms": 1500, "media_ms": 1500 }))).await;
        assert_eq!(set["effective"]["messages_ms"], 1500, "{set}");
        assert_eq!(set["effective"]["correspondence_ms"], Value::Null);
    }
    // D: the room's own m.room.retention (MSC1763).
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{room_d}/state/m.room.retention/"),
            Some(&json!({ "max_lifetime": 1500 })),
        )
        .await;
    assert_eq!(root.ok(Method::GET, &policy_path(&room_d), None).await["effective"]["messages_ms"], 1500);
    assert_eq!(root.ok(Method::GET, &policy_path(&room_c), None).await["effective"]["messages_ms"], Value::Null);

    let mut old_a = Vec::new();
    for i in 0..12 {
        old_a.push(alice.send_text(&room_a, &format!("zephyrin numéro {i}")).await);
    }
    let upload = format!("{}/_matrix/media/v3/upload?filename=photo.png", alice.base);
    let resp = alice
        .http
        .post(upload)
        .bearer_auth(alice.token.as_deref().unwrap())
        .header("content-type", "image/png")
        .body(b"not really a png".to_vec())
        .send()
        .await
        .unwrap();
    let mxc = resp.json::<Value>().await.unwrap()["content_uri"].as_str().unwrap().to_owned();
    let (status, image) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room_a}/send/m.room.message/img"),
            &json!({ "msgtype": "m.image", "body": "photo.png", "url": mxc }),
        )
        .await;
    assert_eq!(status, 200, "{image}");
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{room_a}/state/m.room.topic/"),
            Some(&json!({ "topic": "zephyrin au sujet" })),
        )
        .await;
    let old_b = alice.send_text(&room_b, "zephyrin dans B").await;
    let old_c = alice.send_text(&room_c, "zephyrin dans C").await;
    let old_d = alice.send_text(&room_d, "zephyrin dans D").await;
    let hold =
        root.ok(Method::POST, HOLDS, Some(&json!({ "scope": "room", "target": room_b, "reason": "Enquête" }))).await;
    let hold_id = hold["hold_id"].as_str().unwrap().to_owned();
    assert_eq!(hold["rooms"], json!([room_b]));
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let recent_a = alice.send_text(&room_a, "zephyrin récent").await;

    // One purge: A's twelve messages and its image, D's message; B's kept on hold.
    let run = root.ok(Method::POST, PURGE, None).await;
    assert_eq!(
        (run["events"].as_i64(), run["media"].as_i64(), run["kept_on_hold"].as_i64()),
        (Some(14), Some(1), Some(1)),
        "{run}"
    );
    assert!(run["finished_ts"].is_i64(), "{run}");
    for id in &old_a {
        let emptied = event(&alice, &room_a, id).await;
        assert_eq!(emptied["content"], json!({}), "{emptied}");
    }
    assert_eq!(event(&alice, &room_a, image["event_id"].as_str().unwrap()).await["content"], json!({}));
    assert_eq!(event(&alice, &room_d, &old_d).await["content"], json!({}));
    assert_eq!(event(&alice, &room_a, &recent_a).await["content"]["body"], "zephyrin récent");
    assert_eq!(event(&alice, &room_b, &old_b).await["content"]["body"], "zephyrin dans B");
    assert_eq!(event(&alice, &room_c, &old_c).await["content"]["body"], "zephyrin dans C");
    let topic = alice.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room_a}/state/m.room.topic/"), None).await;
    assert_eq!(topic["topic"], "zephyrin au sujet");
    // The file is gone; the search finds only what is left.
    let media_id = mxc.rsplit('/').next().unwrap();
    let (status, _) = alice.get(&format!("/_matrix/client/v1/media/download/localhost/{media_id}")).await;
    assert_eq!(status, 404);
    let mut expected = vec![room_a.clone(), room_b.clone(), room_c.clone()];
    expected.sort();
    assert_eq!(found_in(&alice, "zephyrin").await, expected, "A holds its recent message and topic");
    assert!(!found_in(&alice, "numéro").await.contains(&room_a));

    // Nothing more to do; then the hold is released (recorded) and B's message goes.
    let again = root.ok(Method::POST, PURGE, None).await;
    assert_eq!((again["events"].as_i64(), again["kept_on_hold"].as_i64()), (Some(0), Some(1)), "{again}");
    let released =
        root.ok(Method::POST, &format!("{HOLDS}/{hold_id}/release"), Some(&json!({ "reason": "Classée" }))).await;
    assert_eq!(
        (released["released_by"].as_str(), released["release_reason"].as_str()),
        (Some(root.user_id.as_str()), Some("Classée"))
    );
    let last = root.ok(Method::POST, PURGE, None).await;
    assert_eq!(last["events"], 1, "{last}");
    assert_eq!(event(&alice, &room_b, &old_b).await["content"], json!({}));
    let runs = root.ok(Method::GET, "/_diplomatie/admin/v1/retention/runs", None).await;
    let counts: Vec<i64> = runs["runs"].as_array().unwrap().iter().map(|r| r["events"].as_i64().unwrap()).collect();
    assert_eq!(counts, vec![1, 0, 14], "newest first");
    let holds = root.ok(Method::GET, HOLDS, None).await;
    assert_eq!(holds["holds"][0]["reason"], "Enquête");
    assert_eq!(holds["holds"][0]["release_reason"], "Classée");

    // Refusals.
    assert_error(&alice.post(PURGE, &json!({})).await, 403, "M_FORBIDDEN");
    assert_error(&alice.put(&policy_path(&room_a), &json!({ "messages_ms": 1 })).await, 403, "M_FORBIDDEN");
    assert_error(&root.put(&policy_path("!nowhere:localhost"), &json!({ "messages_ms": 1 })).await, 404, "M_NOT_FOUND");
    assert_error(&root.put(&policy_path(&room_a), &json!({ "messages_ms": -1 })).await, 400, "M_BAD_JSON");
    assert_error(&root.put(&policy_path(&room_a), &json!({ "forever": true })).await, 400, "M_BAD_JSON");
    assert_error(
        &root.post(HOLDS, &json!({ "scope": "planet", "target": "x", "reason": "r" })).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &root.post(HOLDS, &json!({ "scope": "room", "target": room_a, "reason": " " })).await,
        400,
        "M_MISSING_PARAM",
    );
    assert_error(
        &root.post(HOLDS, &json!({ "scope": "group", "target": "atlantide", "reason": "r" })).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &root.post(&format!("{HOLDS}/{hold_id}/release"), &json!({ "reason": "encore" })).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(&root.post(&format!("{HOLDS}/nope/release"), &json!({ "reason": "r" })).await, 404, "M_NOT_FOUND");
    assert_error(&alice.get(HOLDS).await, 403, "M_FORBIDDEN");
    assert_error(&root.raw(Method::POST, HOLDS, b"{".to_vec()).await, 400, "M_NOT_JSON");
}

const ORG: &str = r#"
users:
  - { localpart: root, password: pw, admin: true }
  - { localpart: alice, password: pw, group: paris }
  - { localpart: bob, password: pw, group: paris }
  - { localpart: carol, password: pw, group: dgm }
groups:
  - { slug: paris, name: "Ambassade à Paris", managers: [alice] }
  - { slug: dgm, name: DGM, managers: [carol] }
"#;

async fn a_hold_keeps_originals_and_refuses_erasure(backend: Backend) {
    let server = TestServer::start_with_organisation(backend, ORG, &[]).await;
    let root = server.login("root", "pw").await;
    let bob = server.login("bob", "pw").await;
    let carol = server.login("carol", "pw").await;

    // A correspondence whose retention passes in its sending group's room: that copy is
    // emptied and its record deleted; the addressee's copy follows its own room's policy.
    let directory = |alias: &str| format!("/_matrix/client/v3/directory/room/{}", urlencode(alias));
    let paris_room = bob.ok(Method::GET, &directory("#g.paris.correspondence:localhost"), None).await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let dgm_room = carol.ok(Method::GET, &directory("#g.dgm.correspondence:localhost"), None).await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    root.ok(Method::PUT, &policy_path(&paris_room), Some(&json!({ "correspondence_ms": 1500 }))).await;
    let telegram =
        json!({ "kind": "telegram", "from": "paris", "subject": "Objet", "body": "Texte", "action": ["dgm"] });
    let reference = bob.ok(Method::POST, "/_diplomatie/client/v1/correspondence", Some(&telegram)).await["reference"]
        .as_str()
        .unwrap()
        .to_owned();
    let record = format!("/_diplomatie/client/v1/correspondence/{reference}");
    bob.ok(Method::GET, &record, None).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let run = root.ok(Method::POST, PURGE, None).await;
    assert_eq!((run["events"].as_i64(), run["records"].as_i64()), (Some(1), Some(1)), "{run}");
    assert_error(&bob.get(&record).await, 404, "M_NOT_FOUND");
    let copies = |room: String, c: Client| async move {
        let v = c.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), None).await;
        v["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["content"]["msgtype"] == "fr.diplomatie.correspondence")
            .count()
    };
    assert_eq!(copies(paris_room.clone(), bob.clone()).await, 0);
    assert_eq!(copies(dgm_room.clone(), carol.clone()).await, 1);

    let general = bob.ok(Method::GET, "/_matrix/client/v3/directory/room/%23g.paris.general%3Alocalhost", None).await;
    let room = general["room_id"].as_str().unwrap().to_owned();
    let held = root
        .ok(Method::POST, HOLDS, Some(&json!({ "scope": "group", "target": "paris", "reason": "Contentieux" })))
        .await;
    assert!(held["rooms"].as_array().unwrap().iter().any(|r| r == room.as_str()), "{held}");
    root.ok(Method::POST, HOLDS, Some(&json!({ "scope": "user", "target": bob.user_id, "reason": "Contentieux" })))
        .await;

    // Bob redacts his message: hidden from clients, kept for the archive.
    let said = bob.send_text(&room, "Le montant convenu est de 40 000 euros").await;
    bob.ok(
        Method::PUT,
        &format!("/_matrix/client/v3/rooms/{room}/redact/{}/r1", urlencode(&said)),
        Some(&json!({ "reason": "oups" })),
    )
    .await;
    assert_eq!(event(&bob, &room, &said).await["content"], json!({}));
    let resp = root
        .http
        .post(format!("{}/_diplomatie/admin/v1/archive/export", root.base))
        .bearer_auth(root.token.as_deref().unwrap())
        .json(&json!({ "group": "paris", "from": "2000-01-01", "to": "2099-12-31" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let package = resp.bytes().await.unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(package)).unwrap();
    let mut document = String::new();
    std::io::Read::read_to_string(&mut zip.by_name("content/salons/paris-general.json").unwrap(), &mut document)
        .unwrap();
    assert!(document.contains("40 000 euros") && document.contains("original_kept_under_legal_hold"), "{document}");

    // Held, bob's account cannot be erased.
    let (_, uia) = bob.post("/_matrix/client/v3/account/deactivate", &json!({ "erase": true })).await;
    let auth = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "bob" }, "password": "pw", "session": uia["session"] });
    assert_error(
        &bob.post("/_matrix/client/v3/account/deactivate", &json!({ "auth": auth, "erase": true })).await,
        403,
        "M_FORBIDDEN",
    );
    assert_eq!(bob.get("/_matrix/client/v3/account/whoami").await.0, 200, "the account is still open");
}

async fn a_purge_stopped_in_the_middle_finishes_after_a_restart(backend: Backend) {
    let mut server = TestServer::start(backend, &[("RETENTION__BATCH_SIZE", "5")]).await;
    let root = server.admin().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({ "name": "Ancien" })).await;
    root.ok(Method::PUT, &policy_path(&room), Some(&json!({ "messages_ms": 1 }))).await;
    let mut sent = Vec::new();
    for i in 0..200 {
        sent.push(alice.send_text(&room, &format!("quillembert {i}")).await);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Started, then the server is killed while it runs.
    let purging = root.clone();
    let first = tokio::spawn(async move { purging.request(Method::POST, PURGE, None).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.kill().await;
    let _ = first.await;
    server.launch().await;
    let root = server.login("root", "pw").await;
    let alice = server.login("alice", "correct horse").await;
    root.ok(Method::POST, PURGE, None).await;

    for id in &sent {
        assert_eq!(event(&alice, &room, id).await["content"], json!({}), "{id}");
    }
    assert!(found_in(&alice, "quillembert").await.is_empty());
    // Each event emptied once: the runs' counts add up to the 200 messages.
    let runs = root.ok(Method::GET, "/_diplomatie/admin/v1/retention/runs", None).await;
    let total: i64 = runs["runs"].as_array().unwrap().iter().map(|r| r["events"].as_i64().unwrap()).sum();
    assert_eq!(total, 200, "{runs}");
}
