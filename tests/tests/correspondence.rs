//! Formal correspondence, black box: a telegram composed as a draft in a group's
//! correspondence room, previewed by the service account and dispatched by the author's ✅;
//! delivered for action, for information and into a community by its tags; the journals and
//! their statuses; the audience; the offline verification of the export; and everything that
//! must be refused without half-dispatching anything.

use std::time::Duration;

use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
use diplomatie_tests::{assert_error, backend_tests, urlencode, Backend, Client, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

backend_tests!(
    a_telegram_goes_from_draft_to_journals_and_its_audience_is_counted,
    bad_correspondence_is_refused_and_nothing_is_dispatched,
    a_client_signs_its_own_correspondence_and_replays_are_refused,
    dr_correspondence_stays_in_dr_rooms,
);

const ORG: &str = r#"
users:
  - { localpart: root, password: pw, admin: true }
  - { localpart: alice, password: pw, group: paris }
  - { localpart: bob, password: pw, group: dgm }
  - { localpart: carol, password: pw, group: dgm }
  - { localpart: dave, password: pw, group: dfae }
  - { localpart: erin, password: pw, group: cabinet }
  - { localpart: frank, password: pw, group: cabinet }
  - { localpart: gina, password: pw, clearance: DR, group: secret }
  - { localpart: hugo, password: pw, clearance: DR, group: secret2 }
groups:
  - { slug: paris, name: "Ambassade à Paris", managers: [alice] }
  - { slug: dgm, name: DGM, managers: [bob] }
  - { slug: dfae, name: DFAE, managers: [dave] }
  - { slug: cabinet, name: Cabinet, managers: [erin] }
  - { slug: secret, name: "Cellule DR", classification: DR, managers: [gina] }
  - { slug: secret2, name: "Cellule DR 2", classification: DR, managers: [hugo] }
communities:
  - { slug: energie, name: "Énergie", manager: frank, project: "Transition", tags: [energie], join: open, members: [frank] }
  - { slug: sport, name: "Sport", manager: erin, project: "JO", tags: [sport], join: open, members: [erin] }
"#;

async fn login(server: &TestServer, user: &str) -> Client {
    let mut c = server.client();
    let body =
        json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": user }, "password": "pw" });
    let (status, v) = c.post("/_matrix/client/v3/login", &body).await;
    assert_eq!(status, 200, "{v}");
    c.token = Some(v["access_token"].as_str().unwrap().to_owned());
    c.user_id = v["user_id"].as_str().unwrap().to_owned();
    c.device_id = v["device_id"].as_str().unwrap().to_owned();
    c
}

/// Imports the organisation (through the command line, before the server starts).
async fn organisation(backend: Backend) -> TestServer {
    TestServer::start_with_organisation(backend, ORG, &[]).await
}

async fn room_of(c: &Client, alias: &str) -> String {
    let v = c.ok(Method::GET, &format!("/_matrix/client/v3/directory/room/{}", urlencode(alias)), None).await;
    v["room_id"].as_str().unwrap().to_owned()
}

async fn recent(c: &Client, room: &str) -> Vec<Value> {
    let v = c.ok(Method::GET, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100"), None).await;
    v["chunk"].as_array().unwrap().clone()
}

/// Waits (at most 20 s) for an event of `room` that `matches`.
async fn wait_for(c: &Client, room: &str, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..200 {
        if let Some(e) = recent(c, room).await.into_iter().find(|e| matches(e)) {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {what} in {room}: {:#}", json!(recent(c, room).await));
}

fn body(e: &Value) -> &str {
    e["content"]["body"].as_str().unwrap_or_default()
}

async fn react(c: &Client, room: &str, event: &str, key: &str) {
    let txn = format!("r{}", rand_id());
    let content = json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": event, "key": key } });
    c.ok(Method::PUT, &format!("/_matrix/client/v3/rooms/{room}/send/m.reaction/{txn}"), Some(&content)).await;
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) + std::process::id() as u64 * 1000
}

fn copy_in<'a>(events: &'a [Value], reference: &str) -> Option<&'a Value> {
    events.iter().find(|e| {
        e["content"]["msgtype"] == "fr.diplomatie.correspondence"
            && e["content"]["fr.diplomatie.correspondence"]["reference"] == reference
            && e["content"].get("m.new_content").is_none()
    })
}

fn entry_in<'a>(events: &'a [Value], reference: &str) -> Option<&'a Value> {
    events.iter().find(|e| {
        e["content"]["fr.diplomatie.journal"]["reference"] == reference && e["content"].get("m.new_content").is_none()
    })
}

async fn journal(c: &Client) -> Value {
    c.ok(Method::GET, "/_diplomatie/client/v1/journal", None).await
}

async fn a_telegram_goes_from_draft_to_journals_and_its_audience_is_counted(backend: Backend) {
    let server = organisation(backend).await;
    let [alice, bob, carol, dave, erin, frank] =
        futures::future::join_all(["alice", "bob", "carol", "dave", "erin", "frank"].map(|u| login(&server, u)))
            .await
            .try_into()
            .ok()
            .unwrap();
    // Frank follows "energie" from his journal (the API creates it); Erin does nothing.
    assert_eq!(
        frank.ok(Method::PUT, "/_diplomatie/client/v1/journal/tags/Energie", Some(&json!({}))).await["followed"],
        true
    );
    let frank_journal = journal(&frank).await["room_id"].as_str().unwrap().to_owned();

    // Alice writes a draft in her group's correspondence room; the service previews it.
    let paris = room_of(&alice, "#g.paris.correspondence:localhost").await;
    let draft =
        "!telegram\nAction: dgm, dfae\nInformation: cabinet\nTags: energie\nSubject: Approvisionnement en gaz\n\n\
                 Le fournisseur annonce une baisse des livraisons.";
    let draft_id = alice.send_text(&paris, draft).await;
    let preview = wait_for(&alice, &paris, "preview", |e| {
        e["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == draft_id.as_str() && body(e).starts_with("Aperçu")
    })
    .await;
    assert_eq!(preview["sender"], "@diplomatie:localhost");
    assert!(body(&preview).contains("Pour action : dgm, dfae"), "{preview}");
    // Nothing is sent until the author confirms.
    let preview_id = preview["event_id"].as_str().unwrap().to_owned();
    react(&alice, &paris, &preview_id, "✅").await;
    let sent = wait_for(&alice, &paris, "confirmation", |e| body(e).starts_with("✅ Signé et envoyé")).await;
    let year = body(&sent).split("PARIS-").nth(1).unwrap()[..4].to_owned();
    let reference = format!("PARIS-{year}-000001");
    assert!(body(&sent).contains(&reference), "{sent}");

    // Every addressee room has it, marked for action or for information; the community too.
    let expectations = [
        (&bob, "#g.dgm.correspondence:localhost", "action"),
        (&dave, "#g.dfae.correspondence:localhost", "action"),
        (&erin, "#g.cabinet.correspondence:localhost", "information"),
        (&frank, "#c.energie.general:localhost", "community"),
        (&alice, "#g.paris.correspondence:localhost", "origin"),
    ];
    let mut copies = Vec::new();
    for (c, alias, role) in expectations {
        let room = room_of(c, alias).await;
        let events = recent(c, &room).await;
        let copy = copy_in(&events, &reference).unwrap_or_else(|| panic!("no copy in {alias}"));
        assert_eq!(copy["content"]["fr.diplomatie.delivery"]["as"], role);
        let record = &copy["content"]["fr.diplomatie.correspondence"];
        assert_eq!(record["kind"], "telegram");
        assert_eq!(record["author"], alice.user_id.as_str());
        assert_eq!(record["sealed"]["device_id"], alice.device_id.as_str(), "the device that asked is recorded");
        assert!(body(copy).contains("Approvisionnement en gaz") && body(copy).contains(&reference));
        copies.push((room, copy["event_id"].as_str().unwrap().to_owned()));
    }
    // The sport community's tags do not match.
    let sport = room_of(&erin, "#c.sport.general:localhost").await;
    assert!(copy_in(&recent(&erin, &sport).await, &reference).is_none());

    // Journals: Bob, Carol (dgm) and Dave (dfae) must act; Frank's interest matched; Erin's
    // group is only informed: she has no journal entry.
    for c in [&bob, &carol, &dave] {
        let j = journal(c).await;
        let item = j["action"].as_array().unwrap().iter().find(|i| i["reference"] == reference.as_str()).cloned();
        assert_eq!(item.unwrap()["status"], "new", "{j}");
        let room = j["room_id"].as_str().unwrap();
        let entry = entry_in(&recent(c, room).await, &reference).cloned().expect("journal entry");
        assert_eq!(entry["content"]["msgtype"], "m.notice", "one line; the text is in the group's room");
        assert!(body(&entry).contains("Approvisionnement en gaz"), "{entry}");
        assert_eq!(entry["content"]["fr.diplomatie.journal"]["section"], "action");
        assert_eq!(entry["content"]["fr.diplomatie.journal"]["status"], "new");
    }
    let entry = copy_in(&recent(&frank, &frank_journal).await, &reference).cloned().expect("interest entry, in full");
    assert_eq!(entry["content"]["fr.diplomatie.journal"]["section"], "interest");
    assert!(journal(&erin).await["room_id"].is_null());
    // Erin follows a tag from a standard client: a command in her group's correspondence room.
    let cabinet = room_of(&erin, "#g.cabinet.correspondence:localhost").await;
    erin.send_text(&cabinet, "!suivre #Sport").await;
    wait_for(&erin, &cabinet, "follow answer", |e| body(e) == "Vous suivez désormais « sport ».").await;
    erin.send_text(&cabinet, "!mots-clés").await;
    wait_for(&erin, &cabinet, "tags answer", |e| body(e) == "Vous suivez : sport.").await;
    assert_eq!(journal(&erin).await["tags"], json!(["sport"]));
    assert!(journal(&erin).await["room_id"].is_string(), "following a tag makes the journal");

    // Bob takes it (👀 on his journal entry): every dgm member's entry shows it assigned.
    let bob_journal = journal(&bob).await["room_id"].as_str().unwrap().to_owned();
    let bob_entry =
        entry_in(&recent(&bob, &bob_journal).await, &reference).unwrap()["event_id"].as_str().unwrap().to_owned();
    react(&bob, &bob_journal, &bob_entry, "👀").await;
    let carol_journal = journal(&carol).await["room_id"].as_str().unwrap().to_owned();
    let edit =
        wait_for(&carol, &carol_journal, "status edit", |e| e["content"]["m.relates_to"]["rel_type"] == "m.replace")
            .await;
    assert_eq!(edit["content"]["m.new_content"]["fr.diplomatie.journal"]["status"], "assigned");
    assert_eq!(edit["content"]["m.new_content"]["fr.diplomatie.journal"]["assignee"], bob.user_id.as_str());
    // Dave's group item is untouched; then Dave marks it done with a command.
    let dave_item = |j: Value| {
        j["action"].as_array().unwrap().iter().find(|i| i["reference"] == reference.as_str()).cloned().unwrap()
    };
    assert_eq!(dave_item(journal(&dave).await)["status"], "new");
    let dave_journal = journal(&dave).await["room_id"].as_str().unwrap().to_owned();
    dave.send_text(&dave_journal, &format!("!statut {reference} traité")).await;
    wait_for(&dave, &dave_journal, "status answer", |e| body(e).contains("done pour dfae")).await;
    assert_eq!(dave_item(journal(&dave).await)["status"], "done");
    // Erin is not in an addressee group for action: refused.
    let (status, v) = erin
        .put(&format!("/_diplomatie/client/v1/correspondence/{reference}/status/dgm"), &json!({ "status": "done" }))
        .await;
    assert_eq!((status, v["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{v}");

    // Audience: Bob and Carol read it in dgm's room, Dave in his journal: three readers.
    let dgm_room = &copies[0];
    for c in [&bob, &carol] {
        c.ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", dgm_room.0, urlencode(&dgm_room.1)),
            Some(&json!({})),
        )
        .await;
    }
    let last = recent(&dave, &dave_journal).await[0]["event_id"].as_str().unwrap().to_owned();
    dave.ok(
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{dave_journal}/receipt/m.read/{}", urlencode(&last)),
        Some(&json!({})),
    )
    .await;
    let audience =
        alice.ok(Method::GET, &format!("/_diplomatie/client/v1/correspondence/{reference}/audience"), None).await;
    assert_eq!(audience["readers"], 3, "{audience}");
    assert_eq!(audience["by_group"], json!({ "dgm": 2, "dfae": 1 }));
    assert_error(
        &bob.get(&format!("/_diplomatie/client/v1/correspondence/{reference}/audience")).await,
        403,
        "M_FORBIDDEN",
    );
    // The same from a standard client: a command in the author's correspondence room.
    alice.send_text(&paris, &format!("!audience {reference}")).await;
    wait_for(&alice, &paris, "audience answer", |e| body(e).contains("3 lecteurs")).await;

    // The exported record verifies offline, and fails once a byte is changed.
    let export = bob.ok(Method::GET, &format!("/_diplomatie/client/v1/correspondence/{reference}"), None).await;
    assert_error(&erin.get("/_diplomatie/client/v1/correspondence/NOPE-2026-000001").await, 404, "M_NOT_FOUND");
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(&good, serde_json::to_vec(&export).unwrap()).unwrap();
    let out = server.command(&["verify", good.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&reference));
    let text = serde_json::to_string(&export).unwrap().replace("Approvisionnement en gaz", "Approvisionnement en gax");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, text).unwrap();
    let out = server.command(&["verify", bad.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));

    // Search: the reference and the subject find it, where the user may read it.
    let search = |term: &str| json!({ "search_categories": { "room_events": { "search_term": term } } });
    let found = bob.ok(Method::POST, "/_matrix/client/v3/search", Some(&search(&reference))).await;
    assert!(found["search_categories"]["room_events"]["count"].as_u64().unwrap() >= 1, "{found}");
    let found = erin.ok(Method::POST, "/_matrix/client/v3/search", Some(&search("approvisionnement"))).await;
    assert!(found["search_categories"]["room_events"]["count"].as_u64().unwrap() >= 1, "{found}");
    let stranger = server.register("stranger").await;
    let found = stranger.ok(Method::POST, "/_matrix/client/v3/search", Some(&search("approvisionnement"))).await;
    assert_eq!(found["search_categories"]["room_events"]["count"], 0);
}

async fn count_copies(c: &Client, alias: &str) -> usize {
    let room = room_of(c, alias).await;
    recent(c, &room).await.iter().filter(|e| e["content"]["msgtype"] == "fr.diplomatie.correspondence").count()
}

async fn bad_correspondence_is_refused_and_nothing_is_dispatched(backend: Backend) {
    let server = organisation(backend).await;
    let alice = login(&server, "alice").await;
    let bob = login(&server, "bob").await;
    let good = json!({
        "kind": "telegram", "from": "paris", "subject": "Objet", "body": "Texte",
        "action": ["dgm"], "information": ["cabinet"],
    });
    let path = "/_diplomatie/client/v1/correspondence";
    let with = |k: &str, v: Value| {
        let mut b = good.clone();
        b[k] = v;
        b
    };
    assert_error(&alice.post(path, &with("action", json!(["dgm", "nowhere"]))).await, 404, "M_NOT_FOUND");
    assert_error(&alice.post(path, &with("kind", json!("memo"))).await, 400, "M_INVALID_PARAM");
    assert_error(&alice.post(path, &with("classification", json!("DR"))).await, 403, "M_FORBIDDEN");
    assert_error(&alice.post(path, &with("from", json!("dgm"))).await, 403, "M_FORBIDDEN");
    assert_error(&alice.post(path, &with("in_reply_to", json!("PARIS-1999-000001"))).await, 404, "M_NOT_FOUND");
    assert_error(&alice.post(path, &with("attachments", json!(["http://x"]))).await, 400, "M_INVALID_PARAM");
    assert_error(&alice.post(path, &with("information", json!(["dgm"]))).await, 400, "M_INVALID_PARAM");
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("subject");
    assert_error(&alice.post(path, &missing).await, 400, "M_MISSING_PARAM");
    assert_error(&alice.raw(Method::POST, path, b"{not json".to_vec()).await, 400, "M_NOT_JSON");
    let mut anonymous = alice.clone();
    anonymous.token = None;
    assert_error(&anonymous.post(path, &good).await, 401, "M_MISSING_TOKEN");
    // Nothing of those went anywhere, and no journal was made.
    assert_eq!(count_copies(&bob, "#g.dgm.correspondence:localhost").await, 0);
    assert!(journal(&bob).await["room_id"].is_null());

    // A draft with an unknown group is answered with the reason, and nothing is previewed.
    let paris = room_of(&alice, "#g.paris.correspondence:localhost").await;
    let draft = alice.send_text(&paris, "!note\nAction: atlantide\nSubject: x\n\ntexte").await;
    let answer = wait_for(&alice, &paris, "refusal", |e| {
        e["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == draft.as_str()
    })
    .await;
    assert!(body(&answer).contains("Unknown group \"atlantide\""), "{answer}");

    // The good one goes through once, with the next number.
    let sent = alice.ok(Method::POST, path, Some(&good)).await;
    assert!(sent["reference"].as_str().unwrap().ends_with("-000001"), "{sent}");
    assert_eq!(count_copies(&bob, "#g.dgm.correspondence:localhost").await, 1);
    let again = alice.ok(Method::POST, path, Some(&good)).await;
    assert!(again["reference"].as_str().unwrap().ends_with("-000002"), "{again}");
}

/// Canonical JSON as Matrix signs it (sorted keys, no spaces): serde_json's maps are sorted.
fn sign(record: &mut Value, user: &str, key_id: &str, key: &ed25519_dalek::SigningKey) {
    use ed25519_dalek::Signer;
    let mut unsigned = record.clone();
    unsigned.as_object_mut().unwrap().remove("signatures");
    let signature = key.sign(serde_json::to_string(&unsigned).unwrap().as_bytes());
    record["signatures"] = json!({ user: { key_id: STANDARD_NO_PAD.encode(signature.to_bytes()) } });
}

async fn a_client_signs_its_own_correspondence_and_replays_are_refused(backend: Backend) {
    let server = organisation(backend).await;
    let alice = login(&server, "alice").await;
    let bob = login(&server, "bob").await;
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let public = STANDARD_NO_PAD.encode(key.verifying_key().to_bytes());
    assert_error(
        &alice.put("/_diplomatie/client/v1/correspondence/keys/ed25519:k1", &json!({ "public_key": "bad!" })).await,
        400,
        "M_INVALID_PARAM",
    );
    alice
        .ok(
            Method::PUT,
            "/_diplomatie/client/v1/correspondence/keys/ed25519:k1",
            Some(&json!({ "public_key": public })),
        )
        .await;
    let keys = bob
        .ok(
            Method::GET,
            &format!("/_diplomatie/client/v1/users/{}/correspondence_keys", urlencode(&alice.user_id)),
            None,
        )
        .await;
    assert_eq!(keys["keys"]["ed25519:k1"], public.as_str());

    assert_error(
        &bob.post("/_diplomatie/client/v1/correspondence/references", &json!({ "from": "paris" })).await,
        403,
        "M_FORBIDDEN",
    );
    let reserved = alice
        .ok(Method::POST, "/_diplomatie/client/v1/correspondence/references", Some(&json!({ "from": "paris" })))
        .await;
    let reference = reserved["reference"].as_str().unwrap().to_owned();
    let mut record = json!({
        "kind": "diplomatic_note", "from": "paris", "subject": "Note", "body": "Texte signé par le client",
        "action": ["dgm"], "information": [], "tags": [], "attachments": [], "classification": "NP",
        "reference": reference, "author": alice.user_id, "signed_at": 1_700_000_000_000u64,
    });
    let path = "/_diplomatie/client/v1/correspondence";
    // A signature that does not verify (made over other content): refused, nothing sent.
    let mut forged = record.clone();
    sign(&mut forged, &alice.user_id, "ed25519:k1", &key);
    forged["body"] = json!("Autre texte");
    let (status, v) = alice.post(path, &json!({ "record": forged })).await;
    assert_eq!((status, v["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{v}");
    assert!(v["error"].as_str().unwrap().contains("does not verify"), "{v}");
    assert_eq!(count_copies(&bob, "#g.dgm.correspondence:localhost").await, 0);

    sign(&mut record, &alice.user_id, "ed25519:k1", &key);
    let sent = alice.ok(Method::POST, path, Some(&json!({ "record": record }))).await;
    assert_eq!(sent["reference"], reference.as_str());
    assert_eq!(count_copies(&bob, "#g.dgm.correspondence:localhost").await, 1);
    // The same record again: a replayed reference.
    let (status, v) = alice.post(path, &json!({ "record": record })).await;
    assert_eq!((status, v["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{v}");
    assert!(v["error"].as_str().unwrap().contains("replay"), "{v}");
    assert_eq!(count_copies(&bob, "#g.dgm.correspondence:localhost").await, 1);
    // Someone else's record, or a reference never reserved: refused.
    let (status, _) = bob.post(path, &json!({ "record": record })).await;
    assert_eq!(status, 403);
    let mut unreserved = record.clone();
    unreserved["reference"] = json!("PARIS-2020-000099");
    sign(&mut unreserved, &alice.user_id, "ed25519:k1", &key);
    let (status, v) = alice.post(path, &json!({ "record": unreserved })).await;
    assert_eq!(status, 403, "{v}");

    // The export verifies with the client's key.
    let export = bob.ok(Method::GET, &format!("{path}/{reference}"), None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("e.json");
    std::fs::write(&file, serde_json::to_vec(&export).unwrap()).unwrap();
    let out = server.command(&["verify", file.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

async fn dr_correspondence_stays_in_dr_rooms(backend: Backend) {
    let server = organisation(backend).await;
    let root = login(&server, "root").await;
    let gina = login(&server, "gina").await;
    let hugo = login(&server, "hugo").await;
    let path = "/_diplomatie/client/v1/correspondence";
    let dr = json!({
        "kind": "telegram", "from": "secret", "subject": "Sujet DR", "body": "Contenu DR",
        "action": ["secret2"], "classification": "DR", "tags": ["energie"],
    });
    // From a device not approved for DR: refused.
    assert_error(&gina.post(path, &dr).await, 403, "M_FORBIDDEN");
    root.ok(
        Method::PUT,
        &format!("/_diplomatie/admin/v1/users/{}/devices/{}/clearance", urlencode(&gina.user_id), gina.device_id),
        Some(&json!({ "dr": true })),
    )
    .await;
    // To a group without DR clearance: refused.
    let mut to_np = dr.clone();
    to_np["information"] = json!(["dgm"]);
    let (status, v) = gina.post(path, &to_np).await;
    assert_eq!((status, v["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{v}");
    assert!(v["error"].as_str().unwrap().contains("lacks DR"), "{v}");

    let sent = gina.ok(Method::POST, path, Some(&dr)).await;
    let reference = sent["reference"].as_str().unwrap().to_owned();
    // In the DR group's room in full; the NP community with the same tag gets nothing.
    let room = room_of(&hugo, "#g.secret2.correspondence:localhost").await;
    assert!(copy_in(&recent(&hugo, &room).await, &reference).is_some());
    assert!(!sent["deliveries"].as_array().unwrap().iter().any(|d| d["as"] == "community"), "{sent}");
    // Hugo's journal (an NP room) only points to it.
    let j = journal(&hugo).await;
    let events = recent(&hugo, j["room_id"].as_str().unwrap()).await;
    let entry =
        events.iter().find(|e| e["content"]["fr.diplomatie.journal"]["reference"] == reference.as_str()).unwrap();
    assert_eq!(entry["content"]["msgtype"], "m.notice");
    assert!(!body(entry).contains("Sujet DR") && !body(entry).contains("Contenu DR"), "{entry}");
}
