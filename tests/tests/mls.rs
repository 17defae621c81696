//! MLS in DR rooms, black box, with real openmls devices (`diplomatie-mls`'s device side)
//! against the server as delivery service: groups created, approved devices added and
//! welcomed, messages both ways, an unapproved device refused, two commits racing for one
//! epoch, forged, replayed and tampered commits refused, and no plaintext anywhere in the
//! server's data afterwards.

use diplomatie_mls::{
    b64,
    member::{server_external_sender, Device, Received},
    Identity,
};
use diplomatie_tests::{
    assert_error, backend_tests, clear_dr, everything_stored, urlencode, Backend, Client, TestServer,
};
use reqwest::Method;
use serde_json::{json, Value};

backend_tests!(dr_rooms_speak_mls_through_the_delivery_service);

const SECRET: &str = "rendez-vous discret a Berlin";
const REPLY: &str = "bien recu, confirmation demain";

/// A logged-in device with its MLS state, its Matrix ed25519 key uploaded as its device key.
struct MlsDevice {
    client: Client,
    mls: Device,
    since: Option<String>,
    /// Handshake messages already applied.
    seen: std::collections::HashSet<String>,
}

impl MlsDevice {
    async fn new(client: Client) -> MlsDevice {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let public = key.verifying_key().to_bytes();
        let mls = Device::new(Identity::new(&client.user_id, &client.device_id), &key.to_bytes(), None).unwrap();
        let mut device_keys = json!({
            "user_id": client.user_id,
            "device_id": client.device_id,
            "algorithms": ["fr.diplomatie.mls.v1"],
            "keys": { format!("ed25519:{}", client.device_id): b64::encode(public) },
        });
        let canonical = ruma::canonical_json::to_canonical_value(&device_keys).unwrap().to_string();
        use ed25519_dalek::Signer;
        let signature = b64::encode(key.sign(canonical.as_bytes()).to_bytes());
        device_keys["signatures"] =
            json!({ client.user_id.clone(): { format!("ed25519:{}", client.device_id): signature } });
        client.ok(Method::POST, "/_matrix/client/v3/keys/upload", Some(&json!({ "device_keys": device_keys }))).await;
        MlsDevice { client, mls, since: None, seen: Default::default() }
    }

    async fn upload_key_packages(&self) -> (u16, Value) {
        let packages: Vec<String> = (0..2).map(|_| b64::encode(self.mls.key_package(false).unwrap())).collect();
        let last_resort = b64::encode(self.mls.key_package(true).unwrap());
        self.client
            .post(
                "/_diplomatie/client/v1/mls/key_packages",
                &json!({ "key_packages": packages, "last_resort": last_resort }),
            )
            .await
    }

    async fn commit(&self, room: &str, outgoing: &diplomatie_mls::member::Outgoing) -> (u16, Value) {
        let mut body = json!({ "commit": b64::encode(&outgoing.commit) });
        if let Some(w) = &outgoing.welcome {
            body["welcome"] = json!(b64::encode(w));
        }
        self.client.post(&format!("/_diplomatie/client/v1/mls/rooms/{room}/commit"), &body).await
    }

    async fn send(&self, room: &str, text: &str) -> (u16, Value) {
        let message = b64::encode(self.mls.encrypt(room.as_bytes(), text.as_bytes()).unwrap());
        let txn = format!("t{}", rand::random::<u32>());
        self.client
            .put(&format!("/_diplomatie/client/v1/mls/rooms/{room}/send/{txn}"), &json!({ "message": message }))
            .await
    }

    /// Syncs, joins groups it is welcomed to, and processes the room's MLS events in order:
    /// returns the texts read.
    async fn sync(&mut self, room: &str) -> Vec<(String, String)> {
        let v = self.client.sync(self.since.as_deref(), "timeout=0").await;
        self.since = v["next_batch"].as_str().map(str::to_owned);
        for event in v["to_device"]["events"].as_array().into_iter().flatten() {
            if event["type"] == "fr.diplomatie.mls.welcome" && event["content"]["room_id"] == room {
                let welcome = b64::decode(event["content"]["welcome"].as_str().unwrap()).unwrap();
                // The Welcome carries the ratchet tree of its epoch.
                assert_eq!(self.mls.join(&welcome, None).unwrap(), room.as_bytes());
            }
        }
        if self.mls.epoch(room.as_bytes()).is_some() {
            self.catch_up(room).await;
        }
        let mut read = Vec::new();
        let events = v["rooms"]["join"][room]["timeline"]["events"].as_array().cloned().unwrap_or_default();
        for event in events {
            let kind = event["type"].as_str().unwrap_or_default();
            if !kind.starts_with("fr.diplomatie.mls.") || self.mls.epoch(room.as_bytes()).is_none() {
                continue;
            }
            let message = b64::decode(event["content"]["message"].as_str().unwrap()).unwrap();
            match self.mls.receive(room.as_bytes(), &message) {
                Ok(Received::Application { sender, plaintext }) => {
                    read.push((sender.user_id, String::from_utf8(plaintext).unwrap()))
                }
                Ok(_) => {}
                // Messages of epochs before this device joined.
                Err(_) if kind == "fr.diplomatie.mls.message" => {}
                Err(e) => panic!("{kind}: {e}"),
            }
        }
        read
    }

    /// Applies the commits and the server's proposals it missed, from the handshake log.
    async fn catch_up(&mut self, room: &str) {
        let epoch = self.mls.epoch(room.as_bytes()).unwrap();
        let v = self
            .client
            .ok(Method::GET, &format!("/_diplomatie/client/v1/mls/rooms/{room}/handshakes?from_epoch={epoch}"), None)
            .await;
        for h in v["handshakes"].as_array().unwrap() {
            let text = h["message"].as_str().unwrap();
            if !self.seen.insert(text.to_owned()) {
                continue;
            }
            let message = b64::decode(text).unwrap();
            self.mls.receive(room.as_bytes(), &message).unwrap();
        }
    }
}

/// A device with a key of its own (not the one the server holds for that device), naming
/// `who`'s device: a forger.
fn forger(who: &Client, seed: u8) -> Device {
    Device::new(Identity::new(&who.user_id, &who.device_id), &[seed; 32], None).unwrap()
}

fn forbidden_mentioning(resp: &(u16, Value), words: &str) {
    assert_error(resp, 403, "M_FORBIDDEN");
    let error = resp.1["error"].as_str().unwrap_or_default();
    assert!(error.contains(words), "the refusal says why ({words}): {error}");
}

async fn dr_rooms_speak_mls_through_the_delivery_service(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let root = server.admin().await;
    let alice_client = server.register("alice").await;
    let bob_client = server.register("bob").await;
    let alice2_client = server.login("alice", "correct horse").await;
    let bob2_client = server.login("bob", "correct horse").await;
    for user in [&alice_client, &bob_client] {
        clear_dr(&root, &user.user_id, None).await;
    }
    // Bob's second device is not approved for DR.
    for device in [&alice_client, &alice2_client, &bob_client] {
        clear_dr(&root, &device.user_id, Some(&device.device_id)).await;
    }
    let mut alice = MlsDevice::new(alice_client).await;
    let mut alice2 = MlsDevice::new(alice2_client).await;
    let mut bob = MlsDevice::new(bob_client).await;
    let mut bob2 = MlsDevice::new(bob2_client).await;
    for d in [&alice, &alice2, &bob, &bob2] {
        let (status, v) = d.upload_key_packages().await;
        assert_eq!((status, v["count"].as_i64()), (200, Some(2)), "{v}");
    }
    // A key package must name the uploader's own device, signed with that device's key.
    let someone_else = forger(&alice.client, 7);
    let forged = json!({ "key_packages": [b64::encode(someone_else.key_package(false).unwrap())] });
    forbidden_mentioning(&bob.client.post("/_diplomatie/client/v1/mls/key_packages", &forged).await, "uploading");
    forbidden_mentioning(&alice.client.post("/_diplomatie/client/v1/mls/key_packages", &forged).await, "key");
    assert_error(
        &alice.client.post("/_diplomatie/client/v1/mls/key_packages", &json!({ "key_packages": ["AAAA"] })).await,
        400,
        "M_BAD_JSON",
    );

    // A DR room in MLS mode from its creation; the group id is the room id.
    let room = alice
        .client
        .create_room(json!({ "preset": "private_chat", "initial_state": [
            { "type": "fr.diplomatie.classification", "state_key": "", "content": { "level": "DR" } },
            { "type": "fr.diplomatie.mls", "state_key": "", "content": { "mode": "mls" } },
        ]}))
        .await;
    let config = alice.client.ok(Method::GET, "/_diplomatie/client/v1/mls/config", None).await;
    assert_eq!(config["ciphersuite"], 1);
    let server_key = b64::decode(config["external_sender"]["signature_key"].as_str().unwrap()).unwrap();
    let sender = server_external_sender(config["external_sender"]["server_name"].as_str().unwrap(), &server_key);
    let (info, tree) = alice.mls.create_group(room.as_bytes(), sender).unwrap();
    let group_path = format!("/_diplomatie/client/v1/mls/rooms/{room}/group");
    let body = json!({ "group_info": b64::encode(&info), "ratchet_tree": b64::encode(&tree) });
    assert_eq!(alice.client.post(&group_path, &body).await.0, 200);
    assert_eq!(alice.client.post(&group_path, &body).await.0, 409, "one group per room");

    // Clear messages have no place in it, nor MLS events made by hand.
    forbidden_mentioning(
        &alice
            .client
            .put(&format!("/_matrix/client/v3/rooms/{room}/send/m.room.encrypted/x1"), &json!({ "ciphertext": "x" }))
            .await,
        "MLS",
    );
    forbidden_mentioning(
        &alice
            .client
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/send/fr.diplomatie.mls.message/x2"),
                &json!({ "message": "AAAA" }),
            )
            .await,
        "MLS",
    );
    forbidden_mentioning(
        &alice.client.put(&format!("/_matrix/client/v3/rooms/{room}/state/fr.diplomatie.mls/"), &json!({})).await,
        "creation",
    );

    assert_eq!(alice.client.invite(&room, &bob.client.user_id).await.0, 200);
    assert_eq!(bob.client.join(&room).await.0, 200);
    let claim = |user: &str| json!({ "user_id": user });
    let bobs = alice
        .client
        .ok(Method::POST, "/_diplomatie/client/v1/mls/key_packages/claim", Some(&claim(&bob.client.user_id)))
        .await;
    let bobs = bobs["key_packages"].as_object().unwrap().clone();
    assert_eq!(bobs.len(), 2);
    let package = |of: &MlsDevice, from: &serde_json::Map<String, Value>| {
        b64::decode(from[&of.client.device_id].as_str().unwrap()).unwrap()
    };

    // The unapproved device is refused and gets no Welcome.
    let add = alice.mls.add(room.as_bytes(), &[package(&bob2, &bobs)]).unwrap();
    forbidden_mentioning(&alice.commit(&room, &add).await, "not approved");
    alice.mls.discard_pending(room.as_bytes()).unwrap();

    // Alice's other device and Bob's approved one come in.
    let alices = alice
        .client
        .ok(Method::POST, "/_diplomatie/client/v1/mls/key_packages/claim", Some(&claim(&alice.client.user_id)))
        .await;
    let alices = alices["key_packages"].as_object().unwrap().clone();
    let add = alice.mls.add(room.as_bytes(), &[package(&bob, &bobs), package(&alice2, &alices)]).unwrap();
    let (status, accepted) = alice.commit(&room, &add).await;
    assert_eq!(status, 200, "{accepted}");
    assert_eq!(accepted["epoch"], 1);
    alice.mls.merge_pending(room.as_bytes()).unwrap();
    bob.sync(&room).await;
    alice2.sync(&room).await;
    bob2.sync(&room).await;
    assert_eq!(bob.mls.epoch(room.as_bytes()), Some(1));
    assert_eq!(alice2.mls.epoch(room.as_bytes()), Some(1));
    assert_eq!(bob2.mls.epoch(room.as_bytes()), None, "no Welcome for the unapproved device");
    let group = alice.client.ok(Method::GET, &group_path, None).await;
    assert_eq!(group["epoch"], 1);
    assert_eq!(group["members"].as_array().unwrap().len(), 3);

    // Messages both ways.
    alice.sync(&room).await;
    assert_eq!(alice.send(&room, SECRET).await.0, 200);
    let read = bob.sync(&room).await;
    assert_eq!(read, vec![(alice.client.user_id.clone(), SECRET.to_owned())]);
    assert_eq!(alice2.sync(&room).await, read);
    assert_eq!(bob.send(&room, REPLY).await.0, 200);
    assert_eq!(alice.sync(&room).await, vec![(bob.client.user_id.clone(), REPLY.to_owned())]);
    // The unapproved device may not send, even with a group of its own for this room id.
    forbidden_mentioning(
        &bob2
            .client
            .put(&format!("/_diplomatie/client/v1/mls/rooms/{room}/send/z"), &json!({ "message": "AAAA" }))
            .await,
        "approved",
    );

    // Two commits for epoch 1: one wins, the other is told to catch up, and does.
    let a = alice.mls.update(room.as_bytes()).unwrap();
    let b = bob.mls.update(room.as_bytes()).unwrap();
    assert_eq!(alice.commit(&room, &a).await.0, 200);
    alice.mls.merge_pending(room.as_bytes()).unwrap();
    let lost = bob.commit(&room, &b).await;
    assert_error(&lost, 409, "FR_DIPLOMATIE_MLS_WRONG_EPOCH");
    assert_eq!(lost.1["current_epoch"], 2);
    bob.mls.discard_pending(room.as_bytes()).unwrap();
    bob.catch_up(&room).await;
    assert_eq!(bob.mls.epoch(room.as_bytes()), Some(2));
    let b = bob.mls.update(room.as_bytes()).unwrap();
    assert_eq!(bob.commit(&room, &b).await.0, 200);
    bob.mls.merge_pending(room.as_bytes()).unwrap();

    // A replayed commit, a tampered one, one from a device outside the group: refused, and
    // the group stays where it was.
    assert_error(&alice.commit(&room, &a).await, 409, "FR_DIPLOMATIE_MLS_WRONG_EPOCH");
    alice.sync(&room).await;
    alice2.sync(&room).await;
    let mut c = alice.mls.update(room.as_bytes()).unwrap();
    c.commit[20] ^= 0x40;
    assert!(matches!(alice.commit(&room, &c).await.0, 400 | 409));
    alice.mls.discard_pending(room.as_bytes()).unwrap();
    let outsider = forger(&bob2.client, 9);
    outsider.create_group(room.as_bytes(), server_external_sender("localhost", &server_key)).unwrap();
    let forged = outsider.update(room.as_bytes()).unwrap();
    assert!(matches!(bob2.commit(&room, &forged).await.0, 400 | 403 | 409));
    // A commit whose GroupInfo (for later external joins) is not of the epoch it makes: the
    // previous epoch's, or one tampered with.
    let d = alice.mls.update(room.as_bytes()).unwrap();
    let mut body = json!({ "commit": b64::encode(&d.commit) });
    body["group_info"] = json!(b64::encode(b.group_info.as_ref().expect("commits come with their group info")));
    let commit_path = format!("/_diplomatie/client/v1/mls/rooms/{room}/commit");
    assert_error(&alice.client.post(&commit_path, &body).await, 400, "M_INVALID_PARAM");
    let mut tampered = d.group_info.clone().unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    body["group_info"] = json!(b64::encode(&tampered));
    assert!(matches!(alice.client.post(&commit_path, &body).await.0, 400));
    alice.mls.discard_pending(room.as_bytes()).unwrap();
    assert_eq!(alice.client.ok(Method::GET, &group_path, None).await["epoch"], 3);

    // Alice's second device loses its approval: the server proposes its removal, nothing is
    // sent until a commit includes it, and the device cannot read what follows.
    alice2.sync(&room).await;
    let path = format!(
        "/_diplomatie/admin/v1/users/{}/devices/{}/clearance",
        urlencode(&alice2.client.user_id),
        urlencode(&alice2.client.device_id)
    );
    assert_eq!(root.put(&path, &json!({ "dr": false })).await.0, 200);
    forbidden_mentioning(&alice.send(&room, "too early").await, "removal");
    let early = alice.mls.update(room.as_bytes()).unwrap();
    forbidden_mentioning(&alice.commit(&room, &early).await, "removal");
    alice.mls.discard_pending(room.as_bytes()).unwrap();
    alice.catch_up(&room).await;
    let removal = alice.mls.commit_pending(room.as_bytes()).unwrap();
    let (status, v) = alice.commit(&room, &removal).await;
    assert_eq!(status, 200, "{v}");
    alice.mls.merge_pending(room.as_bytes()).unwrap();
    let group = alice.client.ok(Method::GET, &group_path, None).await;
    assert_eq!(group["members"].as_array().unwrap().len(), 2);
    assert!(!group["members"].as_array().unwrap().iter().any(|m| m["device_id"] == alice2.client.device_id));
    const AFTER: &str = "apres le retrait du poste";
    let (status, sent) = alice.send(&room, AFTER).await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(bob.sync(&room).await, vec![(alice.client.user_id.clone(), AFTER.to_owned())]);
    let v = alice2.client.sync(alice2.since.as_deref(), "timeout=0").await;
    let last = v["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["event_id"], sent["event_id"]);
    let ciphertext = b64::decode(last["content"]["message"].as_str().unwrap()).unwrap();
    assert!(alice2.mls.receive(room.as_bytes(), &ciphertext).is_err(), "the removed device reads nothing after");

    // Bad input answers the spec's errors.
    let commit_path = format!("/_diplomatie/client/v1/mls/rooms/{room}/commit");
    let (status, v) = alice.client.raw(Method::POST, &commit_path, b"{not json".to_vec()).await;
    assert_error(&(status, v), 400, "M_NOT_JSON");
    assert_error(&alice.client.post(&commit_path, &json!({})).await, 400, "M_MISSING_PARAM");
    assert_error(&alice.client.post(&commit_path, &json!({ "commit": "%%%" })).await, 400, "M_BAD_JSON");
    assert_error(&alice.client.post(&commit_path, &json!({ "commit": "AAAA" })).await, 400, "M_BAD_JSON");
    assert_error(
        &alice.client.get("/_diplomatie/client/v1/mls/rooms/!nowhere:localhost/group").await,
        404,
        "M_NOT_FOUND",
    );
    let plain = alice.client.create_room(json!({ "preset": "private_chat" })).await;
    forbidden_mentioning(
        &alice
            .client
            .put(&format!("/_diplomatie/client/v1/mls/rooms/{plain}/send/p1"), &json!({ "message": "AAAA" }))
            .await,
        "not an MLS room",
    );
    assert_eq!(
        alice.client.get(&format!("/_diplomatie/client/v1/mls/rooms/{room}/handshakes?from_epoch=x")).await.0,
        400
    );
    assert_error(&server.client().get("/_diplomatie/client/v1/mls/config").await, 401, "M_MISSING_TOKEN");

    // Bob leaves the room: the server proposes the removal of his device on its own.
    assert_eq!(bob.client.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), &json!({})).await.0, 200);
    let epoch = alice.mls.epoch(room.as_bytes()).unwrap();
    let handshakes = format!("/_diplomatie/client/v1/mls/rooms/{room}/handshakes?from_epoch={epoch}");
    let mut proposed = false;
    for _ in 0..100 {
        let v = alice.client.ok(Method::GET, &handshakes, None).await;
        if v["handshakes"].as_array().unwrap().iter().any(|h| h["kind"] == "proposal") {
            proposed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(proposed, "a departed member's device is proposed for removal");
    forbidden_mentioning(&alice.send(&room, "bob is gone").await, "removal");

    // After all this, the server holds no plaintext.
    let stored = everything_stored(&server).await;
    for text in [SECRET, REPLY, AFTER] {
        assert!(!stored.windows(text.len()).any(|w| w == text.as_bytes()), "{text:?} is stored in clear");
    }
    // ...though it does hold the ciphertext events (the check reads what it should).
    assert!(stored.windows(24).any(|w| w == b"fr.diplomatie.mls.message"[..24].as_ref()));
}
