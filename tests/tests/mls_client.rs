//! The DR rooms' MLS client (`clients/mls`: its library and its command line) against the real
//! server: log in, create a DR room, invite and add a user's approved devices only, messages
//! both ways, a restart from the store, two devices rotating their keys at once, an approval
//! withdrawn (the client commits the server's removal before sending), leaving; and no
//! plaintext in the server's data afterwards. A partner server (a second instance, on the DR
//! allow-list) hosting members of the group, the room's server ordering its commits. DR
//! formal correspondence signed and encrypted by the client, its metadata dispatched.

use diplomatie_client::{Client, Error};
use diplomatie_tests::{assert_error, backend_tests, clear_dr, everything_stored, urlencode, Backend, TestServer};
use reqwest::Method;
use serde_json::json;

backend_tests!(
    the_client_speaks_mls_in_dr_rooms,
    with_dr_rooms_mls_every_dr_room_is_an_mls_room,
    a_partner_server_hosts_members_of_a_dr_room,
    dr_correspondence_travels_signed_and_encrypted
);

const SECRET: &str = "note verbale 2026-118, projet de reponse";
const REPLY: &str = "relu, deux corrections au paragraphe 3";
const CLI_TEXT: &str = "envoye depuis la ligne de commande";
const AFTER: &str = "apres le retrait de l'agrement du poste";
const BACK: &str = "poste agree de nouveau";

/// Where an administrator sets a device's DR approval.
fn approval_path(c: &Client) -> String {
    format!("/_diplomatie/admin/v1/users/{}/devices/{}/clearance", urlencode(c.user_id()), urlencode(c.device_id()))
}

fn texts(messages: &[diplomatie_client::Message]) -> Vec<&str> {
    messages.iter().map(|m| m.text.as_str()).collect()
}

/// Runs the command line on a store; answers its success, standard output and error.
async fn cli(store: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let bin = diplomatie_tests::binary().with_file_name("diplomatie-client");
    assert!(bin.exists(), "{} is missing: cargo build -p diplomatie-client", bin.display());
    let out = tokio::process::Command::new(bin).arg("--store").arg(store).args(args).output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn the_client_speaks_mls_in_dr_rooms(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let root = server.admin().await;
    for user in ["alice", "bob", "carol"] {
        server.register(user).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = |name: &str| dir.path().join(format!("{name}.json"));
    let login = |name: &str, user: &'static str| {
        let path = store(name);
        let base = server.base.clone();
        async move { Client::login(&path, &base, user, "correct horse").await.unwrap() }
    };
    let mut alice = login("alice", "alice").await;
    let mut bob = login("bob", "bob").await;
    let mut bob2 = login("bob2", "bob").await;
    assert!(
        matches!(Client::login(&store("alice"), &server.base, "alice", "correct horse").await, Err(Error::Usage(_))),
        "a store is one device"
    );
    let wrong = Client::login(&store("mallory"), &server.base, "alice", "wrong").await.err().unwrap();
    assert_eq!(wrong.errcode(), Some("M_FORBIDDEN"));
    assert!(!store("mallory").exists(), "a failed login leaves no store");

    // Alice and Bob are cleared DR; their first client devices are approved, Bob's second not.
    for c in [&alice, &bob] {
        clear_dr(&root, c.user_id(), None).await;
        clear_dr(&root, c.user_id(), Some(c.device_id())).await;
    }

    let room = alice.create_room(Some("Cellule Berlin")).await.unwrap();
    alice.invite(&room, bob.user_id()).await.unwrap();
    bob.join(&room).await.unwrap();
    // Only Bob's approved device is claimed and added: the unapproved one and the device
    // without key packages are left out, and keep their key packages.
    assert_eq!(alice.add(&room, bob.user_id()).await.unwrap(), vec![bob.device_id().to_owned()]);
    assert!(bob.sync(0).await.unwrap().is_empty());
    assert_eq!(bob.epoch(&room), Some(1), "Bob's device opened its Welcome");
    bob2.sync(0).await.unwrap();
    assert_eq!(bob2.epoch(&room), None, "no Welcome for the unapproved device");
    let again = alice.add(&room, bob.user_id()).await.unwrap_err();
    assert!(matches!(again, Error::Usage(_)), "nobody left to add: {again}");
    // Carol is not in the room: her devices cannot be claimed for it.
    let carol = format!("@carol:{}", server.server_name);
    assert_eq!(alice.add(&room, &carol).await.unwrap_err().errcode(), Some("M_FORBIDDEN"));

    // Messages both ways, and a restart from the store in between.
    alice.send(&room, SECRET).await.unwrap();
    assert_eq!(texts(&bob.sync(0).await.unwrap()), [SECRET]);
    drop(bob);
    let mut bob = Client::open(&store("bob")).unwrap();
    assert_eq!(texts(&bob.history(&room)), [SECRET], "what was read survives a restart");
    bob.send(&room, REPLY).await.unwrap();
    assert_eq!(texts(&bob.history(&room)), [SECRET, REPLY]);

    // The command line, on Alice's store.
    let (ok, out, err) = cli(&store("alice"), &["sync"]).await;
    assert!(ok, "{err}");
    assert!(out.contains(REPLY) && out.contains(bob.user_id()), "{out}");
    let (ok, out, err) = cli(&store("alice"), &["send", &room, CLI_TEXT]).await;
    assert!(ok && out.trim().starts_with('$'), "{out} {err}");
    let (ok, out, _) = cli(&store("alice"), &["history", &room]).await;
    assert!(ok);
    assert_eq!(out.lines().count(), 3, "{out}");
    let (ok, out, _) = cli(&store("alice"), &["members", &room]).await;
    assert!(ok && out.contains(bob.device_id()), "{out}");
    let (ok, _, err) = cli(&store("nobody"), &["sync"]).await;
    assert!(!ok && err.contains("cannot read"), "{err}");
    let (ok, _, err) = cli(&store("alice"), &["send", "!nowhere:localhost", "x"]).await;
    assert!(!ok && err.contains("not in the group"), "{err}");
    // The command line wrote the store: the library reads it afresh.
    let mut alice = Client::open(&store("alice")).unwrap();
    assert_eq!(texts(&bob.sync(0).await.unwrap()), [CLI_TEXT]);

    // Both devices rotate their keys at once: one wins the epoch, the other catches up and
    // commits on top; both then read each other.
    let epoch = alice.epoch(&room).unwrap();
    let (a, b) = tokio::join!(alice.rotate(&room), bob.rotate(&room));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a, b);
    assert_eq!(a.max(b), epoch + 2);
    alice.sync(0).await.unwrap();
    bob.sync(0).await.unwrap();
    assert_eq!(alice.epoch(&room), bob.epoch(&room));
    alice.send(&room, "apres rotation").await.unwrap();
    assert_eq!(texts(&bob.sync(0).await.unwrap()), ["apres rotation"]);

    // Bob's device loses its approval: the server proposes its removal, Alice's client
    // commits it before sending, and Bob's device reads nothing of what follows.
    let path = approval_path(&bob);
    assert_eq!(root.put(&path, &json!({ "dr": false })).await.0, 200);
    alice.send(&room, AFTER).await.unwrap();
    assert!(!alice.members(&room).unwrap().iter().any(|m| m.device_id == bob.device_id()));
    assert!(bob.sync(0).await.unwrap().is_empty());
    assert!(!texts(&bob.history(&room)).contains(&AFTER));
    assert!(bob.send(&room, "still here?").await.is_err(), "a removed device sends nothing");

    // While unapproved, it cannot come back by itself either (an external commit), and the
    // refusal leaves the group as it was.
    let epoch = alice.epoch(&room).unwrap();
    assert_eq!(bob.rejoin(&room).await.unwrap_err().errcode(), Some("M_FORBIDDEN"));
    assert_eq!(bob.epoch(&room), None);
    let (_, group) = root.get(&format!("/_diplomatie/client/v1/mls/rooms/{}/group", urlencode(&room))).await;
    assert_eq!(group["errcode"], "M_FORBIDDEN", "the administrator is not in the room: {group}");
    // Approved again, it comes back by itself from the group info Alice's last commit left,
    // and reads what is sent from then on, not what it missed.
    assert_eq!(root.put(&path, &json!({ "dr": true })).await.0, 200);
    assert_eq!(bob.rejoin(&room).await.unwrap(), epoch + 1);
    alice.send(&room, BACK).await.unwrap();
    assert!(alice.members(&room).unwrap().iter().any(|m| m.device_id == bob.device_id()));
    assert_eq!(texts(&bob.sync(0).await.unwrap()), [BACK]);
    assert!(!texts(&bob.history(&room)).contains(&AFTER));

    // Bob's device logs out: its removal is proposed at once, and Alice's next message
    // commits it first.
    let r = reqwest::Client::new()
        .post(format!("{}/_matrix/client/v3/logout", server.base))
        .bearer_auth(bob.access_token())
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    alice.send(&room, "apres la deconnexion").await.unwrap();
    assert!(!alice.members(&room).unwrap().iter().any(|m| m.device_id == bob.device_id()), "logged out, removed");

    // Leaving forgets the group.
    alice.leave(&room).await.unwrap();
    assert_eq!(alice.epoch(&room), None);

    // Many claims at once are all answered (the server decides which devices before it
    // takes a connection for the claim's transaction).
    let body = json!({ "user_id": alice.user_id() });
    let claims = (0..16).map(|_| root.post("/_diplomatie/client/v1/mls/key_packages/claim", &body));
    for (status, v) in futures::future::join_all(claims).await {
        assert_eq!(status, 200, "{v}");
        assert!(v["key_packages"][alice.device_id()].is_string(), "{v}");
    }

    // The server holds no plaintext.
    let stored = everything_stored(&server).await;
    for text in [SECRET, REPLY, CLI_TEXT, AFTER, BACK] {
        assert!(!stored.windows(text.len()).any(|w| w == text.as_bytes()), "{text:?} is stored in clear");
    }
}

/// `portal.dr_rooms_mls`: a DR room is made an MLS room at its creation without asking, clear
/// messages are refused in it, and no room is raised to DR afterwards.
async fn with_dr_rooms_mls_every_dr_room_is_an_mls_room(backend: Backend) {
    let server = TestServer::start(backend, &[("PORTAL__DR_ROOMS_MLS", "true")]).await;
    let root = server.admin().await;
    let alice = server.register("alice").await;
    clear_dr(&root, &alice.user_id, None).await;
    clear_dr(&root, &alice.user_id, Some(&alice.device_id)).await;
    let classified =
        |level: &str| json!({ "type": "fr.diplomatie.classification", "state_key": "", "content": { "level": level } });
    let room = alice.create_room(json!({ "preset": "private_chat", "initial_state": [classified("DR")] })).await;
    let (status, mode) = alice.get(&format!("/_matrix/client/v3/rooms/{room}/state/fr.diplomatie.mls/")).await;
    assert_eq!((status, mode["mode"].as_str()), (200, Some("mls")), "{mode}");
    let encrypted = json!({ "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x", "session_id": "s", "sender_key": "k", "device_id": alice.device_id });
    let clear = alice.put(&format!("/_matrix/client/v3/rooms/{room}/send/m.room.encrypted/e1"), &encrypted).await;
    assert_error(&clear, 403, "M_FORBIDDEN");
    assert!(clear.1["error"].as_str().unwrap_or_default().contains("MLS"), "{}", clear.1);
    assert_eq!(alice.get(&format!("/_diplomatie/client/v1/mls/rooms/{room}/group")).await.0, 404, "no group yet");

    // An NP room stays NP, and cannot be raised to DR.
    let np = alice
        .create_room(json!({ "preset": "private_chat", "initial_state": [
            { "type": "m.room.encryption", "state_key": "", "content": { "algorithm": "m.megolm.v1.aes-sha2" } },
        ]}))
        .await;
    assert_eq!(alice.get(&format!("/_matrix/client/v3/rooms/{np}/state/fr.diplomatie.mls/")).await.0, 404);
    let raise = alice
        .put(&format!("/_matrix/client/v3/rooms/{np}/state/fr.diplomatie.classification/"), &json!({ "level": "DR" }))
        .await;
    assert_error(&raise, 403, "M_FORBIDDEN");
    assert!(raise.1["error"].as_str().unwrap_or_default().contains("MLS"), "{}", raise.1);
}

/// Syncs `client` until `done` holds of what it has read (federation takes its time).
async fn sync_until(client: &mut Client, done: impl Fn(&Client) -> bool) {
    for _ in 0..40 {
        if done(client) {
            return;
        }
        client.sync(500).await.unwrap();
    }
    panic!("{} never got there", client.user_id());
}

/// A DR room of server A shared with B, a partner on A's DR allow-list (and A on B's): B's
/// approved device only is added (B hands out its key packages), messages go both ways, B's
/// commits are ordered by A (a conflict through B is retried as on one server), and B's
/// withdrawal of its device's approval gets the device removed by A's next commit.
async fn a_partner_server_hosts_members_of_a_dr_room(backend: Backend) {
    let (pa, pb) = (diplomatie_tests::free_port(), diplomatie_tests::free_port());
    let (na, nb) = (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}"));
    let allow = |n: &str| format!("[\"{n}\"]");
    let (allow_b, allow_a) = (allow(&nb), allow(&na));
    let mut a =
        TestServer::start_federating_named(backend, &na, pa, &[("PORTAL__DR_FEDERATION_ALLOWLIST", &allow_b)]).await;
    let b =
        TestServer::start_federating_named(backend, &nb, pb, &[("PORTAL__DR_FEDERATION_ALLOWLIST", &allow_a)]).await;
    let (root_a, root_b) = (a.admin().await, b.admin().await);
    a.register("alice").await;
    b.register("bob").await;
    let dir = tempfile::tempdir().unwrap();
    let store = |name: &str| dir.path().join(format!("{name}.json"));
    let mut alice = Client::login(&store("alice"), &a.base, "alice", "correct horse").await.unwrap();
    let mut bob = Client::login(&store("bob"), &b.base, "bob", "correct horse").await.unwrap();
    let mut bob2 = Client::login(&store("bob2"), &b.base, "bob", "correct horse").await.unwrap();
    clear_dr(&root_a, alice.user_id(), None).await;
    clear_dr(&root_a, alice.user_id(), Some(alice.device_id())).await;
    // Bob's clearance and his first device's approval are his own server's.
    clear_dr(&root_b, bob.user_id(), None).await;
    clear_dr(&root_b, bob.user_id(), Some(bob.device_id())).await;

    let room = alice.create_room(Some("Cellule franco-allemande")).await.unwrap();
    alice.invite(&room, bob.user_id()).await.unwrap();
    let mut joined = bob.join(&room).await;
    for _ in 0..20 {
        if joined.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        joined = bob.join(&room).await;
    }
    joined.unwrap();
    // B hands out the key package of Bob's approved device only; A checks its leaf against
    // the device key B answers, and the Welcome travels to B.
    assert_eq!(alice.add(&room, bob.user_id()).await.unwrap(), vec![bob.device_id().to_owned()]);
    sync_until(&mut bob, |c| c.epoch(&room) == Some(1)).await;
    bob2.sync(0).await.unwrap();
    assert_eq!(bob2.epoch(&room), None, "no Welcome for the unapproved device");

    // Messages both ways: B has A check Bob's message (device in the group, epoch) and sends it.
    alice.send(&room, SECRET).await.unwrap();
    sync_until(&mut bob, |c| texts(&c.history(&room)).contains(&SECRET)).await;
    bob.send(&room, REPLY).await.unwrap();
    sync_until(&mut alice, |c| texts(&c.history(&room)).contains(&REPLY)).await;

    // Both rotate at once: A orders the commits, the loser (on either server) retries.
    let epoch = alice.epoch(&room).unwrap();
    let (x, y) = tokio::join!(alice.rotate(&room), bob.rotate(&room));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_ne!(x, y);
    assert_eq!(x.max(y), epoch + 2);
    bob.send(&room, "apres rotation").await.unwrap();
    sync_until(&mut alice, |c| texts(&c.history(&room)).contains(&"apres rotation")).await;
    assert_eq!(alice.epoch(&room), bob.epoch(&room));

    assert_eq!(alice.members(&room).unwrap().len(), 2);
    // The partners' endpoint takes signed requests from servers only.
    let forged = json!({ "room_id": room, "user_id": bob.user_id(), "device_id": bob.device_id(), "message": "x" });
    let r = reqwest::Client::new()
        .post(format!("{}/_diplomatie/federation/v1/mls/check", a.base))
        .json(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // B withdraws the approval of Bob's device: B asks A, which proposes its removal; Alice's
    // next message commits it first, and Bob's device reads nothing after.
    let path = approval_path(&bob);
    assert_eq!(root_b.put(&path, &json!({ "dr": false })).await.0, 200);
    alice.send(&room, AFTER).await.unwrap();
    assert!(!alice.members(&room).unwrap().iter().any(|m| m.device_id == bob.device_id()), "removed");
    bob.sync(1000).await.unwrap();
    assert!(!texts(&bob.history(&room)).contains(&AFTER));
    assert!(bob.send(&room, "encore la?").await.is_err(), "a removed device sends nothing");
    // Approved again by B, Bob's device comes back by itself through B (an external commit A
    // orders), and reads what follows.
    assert_eq!(root_b.put(&path, &json!({ "dr": true })).await.0, 200);
    bob.rejoin(&room).await.unwrap();
    alice.send(&room, BACK).await.unwrap();
    sync_until(&mut bob, |c| texts(&c.history(&room)).contains(&BACK)).await;
    assert!(!texts(&bob.history(&room)).contains(&AFTER));

    // B withdraws the approval again while A is down: B keeps the removal to ask for, and asks
    // once A is back; A proposes it, and Alice's next message commits it.
    a.kill().await;
    assert_eq!(root_b.put(&path, &json!({ "dr": false })).await.0, 200);
    a.launch().await;
    alice.set_homeserver(&a.base).unwrap();
    let epoch = alice.epoch(&room).unwrap();
    let handshakes = format!("/_diplomatie/client/v1/mls/rooms/{}/handshakes?from_epoch={epoch}", urlencode(&room));
    let mut proposed = false;
    for _ in 0..60 {
        let v = api(&alice, &a.base, Method::GET, &handshakes, None).await.unwrap();
        if v["handshakes"].as_array().unwrap().iter().any(|h| h["kind"] == "proposal") {
            proposed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(proposed, "B asked A for the removal once A was back");
    alice.send(&room, "apres la panne").await.unwrap();
    assert!(!alice.members(&room).unwrap().iter().any(|m| m.device_id == bob.device_id()), "removed");

    for server in [&a, &b] {
        let stored = everything_stored(server).await;
        for text in [SECRET, REPLY, AFTER, BACK] {
            assert!(!stored.windows(text.len()).any(|w| w == text.as_bytes()), "{text:?} is stored in clear");
        }
    }
}

/// A request of the client's user (what the library does not wrap).
async fn api(
    c: &Client,
    base: &str,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, Error> {
    diplomatie_client::call(&reqwest::Client::new(), base, Some(c.access_token()), method, path, body).await
}

const ORG: &str = r#"
users:
  - { localpart: root, password: pw, admin: true }
  - { localpart: alice, password: pw, clearance: DR, group: paris }
  - { localpart: bob, password: pw, clearance: DR, group: dgm }
groups:
  - { slug: paris, name: "Ambassade a Paris", classification: DR, managers: [alice] }
  - { slug: dgm, name: DGM, classification: DR, managers: [bob] }
"#;
const SUBJECT: &str = "Negociation gaziere, position francaise";
const TEXT: &str = "Le poste recommande de ne pas signer en l'etat.";

/// A telegram of Paris for action of the DGM, DR: Alice's client signs it, sends it encrypted
/// into both groups' DR rooms (MLS rooms their managers named), the server dispatches what it
/// may see (reference, kind, groups: Bob's journal entry) and Bob's client reads and verifies
/// it. Copies that are not the author's, replays and non-managers are refused; the server's
/// data holds neither the subject nor the text.
async fn dr_correspondence_travels_signed_and_encrypted(backend: Backend) {
    let server = TestServer::start_with_organisation(backend, ORG, &[]).await;
    let root = server.login("root", "pw").await;
    let dir = tempfile::tempdir().unwrap();
    let store = |name: &str| dir.path().join(format!("{name}.json"));
    let mut alice = Client::login(&store("alice"), &server.base, "alice", "pw").await.unwrap();
    let mut bob = Client::login(&store("bob"), &server.base, "bob", "pw").await.unwrap();
    for c in [&alice, &bob] {
        clear_dr(&root, c.user_id(), Some(c.device_id())).await;
    }
    // Each manager makes the group's DR room and names it; Alice's device joins the DGM's.
    let paris = alice.create_room(Some("Paris DR")).await.unwrap();
    let dgm = bob.create_room(Some("DGM DR")).await.unwrap();
    assert_eq!(bob.set_group_dr_room("paris", &dgm).await.unwrap_err().errcode(), Some("M_FORBIDDEN"));
    alice.set_group_dr_room("paris", &paris).await.unwrap();
    bob.set_group_dr_room("dgm", &dgm).await.unwrap();
    assert_eq!(alice.group_dr_room("dgm").await.unwrap(), dgm);
    bob.invite(&dgm, alice.user_id()).await.unwrap();
    alice.join(&dgm).await.unwrap();
    bob.add(&dgm, alice.user_id()).await.unwrap();
    alice.sync(0).await.unwrap();

    let telegram = diplomatie_client::correspondence::Composition {
        kind: "telegram".into(),
        from: "paris".into(),
        subject: SUBJECT.into(),
        body: TEXT.into(),
        action: vec!["dgm".into()],
        ..Default::default()
    };
    let (sent, record) = alice.send_correspondence(&telegram).await.unwrap();
    let roles: Vec<&str> = sent.deliveries.iter().filter_map(|d| d["as"].as_str()).collect();
    assert_eq!(roles, ["origin", "action", "journal_action_pointer"], "{:?}", sent.deliveries);
    assert_eq!(sent.deliveries[1]["room_id"], dgm.as_str());
    assert_eq!(sent.journal_entries, 1, "Bob's action entry");
    let reference = sent.reference.clone();

    // Bob's device reads it in the DGM's DR room, and it verifies.
    let read = bob.sync(0).await.unwrap();
    let got = read.iter().find_map(|m| m.correspondence()).expect("the correspondence");
    assert_eq!((got["subject"].as_str(), got["reference"].as_str()), (Some(SUBJECT), Some(reference.as_str())));
    assert!(bob.verify_correspondence(&got).await.unwrap());
    // Bob's client acknowledged it with a read receipt: Alice sees her audience.
    let path = format!("/_diplomatie/client/v1/correspondence/{reference}/audience");
    let audience = api(&alice, &server.base, Method::GET, &path, None).await.unwrap();
    assert_eq!((audience["readers"].as_u64(), audience["by_group"]["dgm"].as_u64()), (Some(1), Some(1)), "{audience}");
    let mut forged = got.clone();
    forged["body"] = json!("Le poste recommande de signer.");
    assert!(!bob.verify_correspondence(&forged).await.unwrap(), "a changed record does not verify");
    // The DGM must act on it (Bob's journal); the server knows its reference and groups, not
    // its subject.
    let journal = api(&bob, &server.base, Method::GET, "/_diplomatie/client/v1/journal", None).await.unwrap();
    let item = journal["action"].as_array().unwrap().iter().find(|i| i["reference"] == reference.as_str()).cloned();
    let item = item.unwrap_or_else(|| panic!("no action item: {journal}"));
    assert_eq!((item["group"].as_str(), item["status"].as_str()), (Some("dgm"), Some("new")));
    assert!(item["subject"].as_str().unwrap_or_default().is_empty(), "{item}");
    let path = format!("/_diplomatie/client/v1/correspondence/{reference}");
    let export = api(&alice, &server.base, Method::GET, &path, None).await.unwrap();
    assert_eq!(export["record"]["kind"], "telegram");
    assert_eq!(export["record"]["action"], json!(["dgm"]));
    assert!(export["record"].get("subject").is_none(), "the server never had it: {export}");

    // A dispatch whose copy is someone else's message, and a replay: refused.
    let path = "/_diplomatie/client/v1/correspondence/references";
    let reserved = api(&alice, &server.base, Method::POST, path, Some(&json!({ "from": "paris" }))).await.unwrap();
    let theirs = bob.send(&dgm, "pas une correspondance").await.unwrap();
    let mine = alice.send(&paris, "copie").await.unwrap();
    let body = json!({
        "reference": reserved["reference"], "kind": "telegram", "from": "paris", "action": ["dgm"],
        "copies": { "paris": mine, "dgm": theirs },
    });
    let path = "/_diplomatie/client/v1/correspondence/encrypted";
    let refused = api(&alice, &server.base, Method::POST, path, Some(&body)).await.unwrap_err();
    assert_eq!(refused.errcode(), Some("M_INVALID_PARAM"), "{refused}");
    let mut replay = body.clone();
    replay["reference"] = json!(reference);
    replay["copies"]["dgm"] = json!(sent.deliveries.iter().find(|d| d["group"] == "dgm").unwrap()["event_id"]);
    let refused = api(&alice, &server.base, Method::POST, path, Some(&replay)).await.unwrap_err();
    assert_eq!(refused.errcode(), Some("M_FORBIDDEN"), "{refused}");
    assert_eq!(record["signatures"].as_object().unwrap().len(), 1, "signed by its author alone");

    // Bad requests get the spec's errors.
    let missing = json!({ "reference": reference, "kind": "telegram", "from": "paris", "action": ["dgm"] });
    assert_eq!(
        api(&alice, &server.base, Method::POST, path, Some(&missing)).await.unwrap_err().errcode(),
        Some("M_MISSING_PARAM")
    );
    let mut unknown = body.clone();
    unknown["action"] = json!(["nulle-part"]);
    assert_eq!(
        api(&alice, &server.base, Method::POST, path, Some(&unknown)).await.unwrap_err().errcode(),
        Some("M_NOT_FOUND")
    );
    let mut letter = body.clone();
    letter["kind"] = json!("lettre");
    assert_eq!(
        api(&alice, &server.base, Method::POST, path, Some(&letter)).await.unwrap_err().errcode(),
        Some("M_INVALID_PARAM")
    );
    assert_eq!(alice.group_dr_room("nulle-part").await.unwrap_err().errcode(), Some("M_NOT_FOUND"));
    let np = alice.set_group_dr_room("paris", "!inconnu:localhost").await.unwrap_err();
    assert_eq!(np.errcode(), Some("M_NOT_FOUND"), "{np}");

    let stored = everything_stored(&server).await;
    for text in [SUBJECT, TEXT] {
        assert!(!stored.windows(text.len()).any(|w| w == text.as_bytes()), "{text:?} is stored in clear");
    }
}
