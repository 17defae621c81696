//! End-to-end encryption support: key upload, query, claim and changes, send-to-device and the
//! device lists in `/sync` (client-server spec, "End-to-End Encryption").

use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
use diplomatie_tests::{assert_error, backend_tests, urlencode, Backend, Client, TestServer};
use ed25519_dalek::{Signer, SigningKey};
use reqwest::Method;
use serde_json::{json, Value};

backend_tests!(
    keys_upload_query_and_claim,
    bad_keys_are_refused_and_lose_nothing,
    to_device_messages_and_device_lists,
    dehydrated_devices_receive_to_device_messages,
    remote_device_lists_are_kept_and_followed,
);

const DEHYDRATED: &str = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device";

async fn dehydrated_devices_receive_to_device_messages(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    assert_error(&alice.get(DEHYDRATED).await, 404, "M_NOT_FOUND");
    let mut dehydrated = alice.clone();
    dehydrated.device_id = "DEHYDRATED1".into();
    let dev = Device::new(&dehydrated, 42);
    let put = json!({
        "device_id": "DEHYDRATED1",
        "initial_device_display_name": "Dehydrated device",
        "device_data": { "algorithm": "m.dehydration.v1.olm", "device_pickle": "encrypted" },
        "device_keys": dev.device_keys(),
        "one_time_keys": { "signed_curve25519:AAAAAQ": dev.one_time_key(1) },
    });
    let r = alice.ok(Method::PUT, DEHYDRATED, Some(&put)).await;
    assert_eq!(r["device_id"], "DEHYDRATED1");
    let got = alice.ok(Method::GET, DEHYDRATED, None).await;
    assert_eq!(got["device_data"]["device_pickle"], "encrypted");
    // Others see its keys and can claim its one-time key.
    let q = bob
        .ok(Method::POST, "/_matrix/client/v3/keys/query", Some(&json!({ "device_keys": { &alice.user_id: [] } })))
        .await;
    assert!(q["device_keys"][&alice.user_id]["DEHYDRATED1"].is_object(), "{q}");
    // To-device messages wait for it, page by page.
    let msg = json!({ "messages": { &alice.user_id: { "DEHYDRATED1": { "ciphertext": "for later" } } } });
    bob.ok(Method::PUT, "/_matrix/client/v3/sendToDevice/m.room.encrypted/d1", Some(&msg)).await;
    let events_path = format!("{DEHYDRATED}/DEHYDRATED1/events");
    let page = alice.ok(Method::POST, &events_path, Some(&json!({}))).await;
    assert_eq!(page["events"][0]["content"]["ciphertext"], "for later");
    let next = page["next_batch"].as_str().unwrap().to_owned();
    let page = alice.ok(Method::POST, &events_path, Some(&json!({ "next_batch": next }))).await;
    assert_eq!(page["events"], json!([]));
    assert_error(&bob.post(&events_path, &json!({})).await, 403, "M_FORBIDDEN");
    // Keys of another device refuse the whole device.
    let mut forged = put.clone();
    forged["device_id"] = json!("DEHYDRATED2");
    assert_error(&alice.put(DEHYDRATED, &forged).await, 400, "M_INVALID_PARAM");
    assert_eq!(alice.ok(Method::GET, DEHYDRATED, None).await["device_id"], "DEHYDRATED1");
    // Deleting removes it and its keys.
    let r = alice.ok(Method::DELETE, DEHYDRATED, None).await;
    assert_eq!(r["device_id"], "DEHYDRATED1");
    assert_error(&alice.get(DEHYDRATED).await, 404, "M_NOT_FOUND");
    let q = bob
        .ok(
            Method::POST,
            "/_matrix/client/v3/keys/query",
            Some(&json!({ "device_keys": { &alice.user_id: ["DEHYDRATED1"] } })),
        )
        .await;
    assert_eq!(q["device_keys"][&alice.user_id], json!({}));
}

/// A device's identity key, signing JSON as clients do (canonical JSON, sorted keys).
struct Device {
    key: SigningKey,
    user: String,
    id: String,
}

impl Device {
    fn new(client: &Client, seed: u8) -> Device {
        Device { key: SigningKey::from_bytes(&[seed; 32]), user: client.user_id.clone(), id: client.device_id.clone() }
    }

    fn public(&self) -> String {
        STANDARD_NO_PAD.encode(self.key.verifying_key().to_bytes())
    }

    fn sign(&self, mut object: Value) -> Value {
        object.as_object_mut().unwrap().remove("signatures");
        // serde_json's maps are sorted and compact: the canonical form for these values.
        let canonical = serde_json::to_string(&object).unwrap();
        let signature = STANDARD_NO_PAD.encode(self.key.sign(canonical.as_bytes()).to_bytes());
        object["signatures"] = json!({ &self.user: { format!("ed25519:{}", self.id): signature } });
        object
    }

    fn device_keys(&self) -> Value {
        self.sign(json!({
            "user_id": self.user,
            "device_id": self.id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": { format!("curve25519:{}", self.id): "Y3VydmUyNTUxOWtleW9mdGhpc2RldmljZQ", format!("ed25519:{}", self.id): self.public() },
        }))
    }

    fn one_time_key(&self, n: u8) -> Value {
        self.sign(json!({ "key": format!("b3RrZXl7{n}") }))
    }
}

async fn keys_upload_query_and_claim(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let dev = Device::new(&alice, 7);
    let upload = json!({
        "device_keys": dev.device_keys(),
        "one_time_keys": { "signed_curve25519:AAAAAQ": dev.one_time_key(1), "signed_curve25519:AAAAAg": dev.one_time_key(2) },
        "fallback_keys": { "signed_curve25519:AAAAAw": dev.one_time_key(3) },
    });
    let counts = alice.ok(Method::POST, "/_matrix/client/v3/keys/upload", Some(&upload)).await;
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 2);
    // Uploading the same again changes nothing.
    let counts = alice.ok(Method::POST, "/_matrix/client/v3/keys/upload", Some(&upload)).await;
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 2);

    let q = bob
        .ok(Method::POST, "/_matrix/client/v3/keys/query", Some(&json!({ "device_keys": { &alice.user_id: [] } })))
        .await;
    let keys = &q["device_keys"][&alice.user_id][&alice.device_id];
    assert_eq!(keys["keys"][format!("ed25519:{}", alice.device_id)], dev.public());
    assert_eq!(keys["unsigned"]["device_display_name"], "test device");
    assert_eq!(keys["signatures"], dev.device_keys()["signatures"]);

    // Two claims take the two one-time keys, the third gets the fallback key (again and again).
    let claim = json!({ "one_time_keys": { &alice.user_id: { &alice.device_id: "signed_curve25519" } } });
    let mut seen = Vec::new();
    for _ in 0..4 {
        let c = bob.ok(Method::POST, "/_matrix/client/v3/keys/claim", Some(&claim)).await;
        let got = c["one_time_keys"][&alice.user_id][&alice.device_id].as_object().unwrap().clone();
        assert_eq!(got.len(), 1);
        seen.push(got.keys().next().unwrap().clone());
    }
    assert_eq!(seen[2], "signed_curve25519:AAAAAw");
    assert_eq!(seen[3], "signed_curve25519:AAAAAw");
    let mut otks = seen[..2].to_vec();
    otks.sort();
    assert_eq!(otks, vec!["signed_curve25519:AAAAAQ", "signed_curve25519:AAAAAg"]);

    // Sync reports the counts and that the fallback key was used.
    let s = alice.sync(None, "").await;
    assert_eq!(s["device_one_time_keys_count"], json!({ "signed_curve25519": 0 }));
    assert_eq!(s["device_unused_fallback_key_types"], json!([]));
    // Claims for unknown devices come back empty.
    let c = bob
        .ok(
            Method::POST,
            "/_matrix/client/v3/keys/claim",
            Some(&json!({ "one_time_keys": { "@nobody:localhost": { "X": "signed_curve25519" } } })),
        )
        .await;
    assert_eq!(c["one_time_keys"], json!({}), "{c}");
}

async fn bad_keys_are_refused_and_lose_nothing(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let dev = Device::new(&alice, 9);
    alice.ok(Method::POST, "/_matrix/client/v3/keys/upload", Some(&json!({ "device_keys": dev.device_keys() }))).await;
    let impostor =
        Device { key: SigningKey::from_bytes(&[1; 32]), user: alice.user_id.clone(), id: alice.device_id.clone() };
    // Device keys without their signatures are not device keys.
    let mut unsigned = dev.device_keys();
    unsigned.as_object_mut().unwrap().remove("signatures");
    assert_error(
        &alice.post("/_matrix/client/v3/keys/upload", &json!({ "device_keys": unsigned })).await,
        400,
        "M_BAD_JSON",
    );
    // A different key for the same device: refused, the old one stays.
    assert_error(
        &alice.post("/_matrix/client/v3/keys/upload", &json!({ "device_keys": impostor.device_keys() })).await,
        400,
        "M_INVALID_PARAM",
    );
    let q = alice
        .ok(Method::POST, "/_matrix/client/v3/keys/query", Some(&json!({ "device_keys": { &alice.user_id: [] } })))
        .await;
    assert_eq!(
        q["device_keys"][&alice.user_id][&alice.device_id]["keys"][format!("ed25519:{}", alice.device_id)],
        dev.public()
    );
    // Keys of another device, or of another user.
    let mut other = dev.device_keys();
    other["device_id"] = json!("OTHER");
    assert_error(
        &alice.post("/_matrix/client/v3/keys/upload", &json!({ "device_keys": other })).await,
        400,
        "M_INVALID_PARAM",
    );
    // A one-time key id re-uploaded with another value.
    alice
        .ok(
            Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(&json!({ "one_time_keys": { "signed_curve25519:AAAABQ": dev.one_time_key(5) } })),
        )
        .await;
    assert_error(
        &alice
            .post(
                "/_matrix/client/v3/keys/upload",
                &json!({ "one_time_keys": { "signed_curve25519:AAAABQ": dev.one_time_key(6) } }),
            )
            .await,
        400,
        "M_INVALID_PARAM",
    );
    let counts = alice.ok(Method::POST, "/_matrix/client/v3/keys/upload", Some(&json!({}))).await;
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 1);
    assert_error(
        &alice.post("/_matrix/client/v3/keys/upload", &json!({ "one_time_keys": { "nocolon": "x" } })).await,
        400,
        "M_BAD_JSON",
    );
}

async fn to_device_messages_and_device_lists(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let since = bob.sync(None, "").await["next_batch"].as_str().unwrap().to_owned();

    // To-device: delivered once, then acknowledged by the next since token.
    let msg = json!({ "messages": { &bob.user_id: { &bob.device_id: { "ciphertext": "opaque" } } } });
    alice.ok(Method::PUT, "/_matrix/client/v3/sendToDevice/m.room.encrypted/t1", Some(&msg)).await;
    alice.ok(Method::PUT, "/_matrix/client/v3/sendToDevice/m.room.encrypted/t1", Some(&msg)).await;
    let s = bob.sync(Some(&since), "timeout=0").await;
    let events = s["to_device"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "a retried transaction is delivered once: {s}");
    assert_eq!(events[0]["sender"], alice.user_id.as_str());
    assert_eq!(events[0]["content"]["ciphertext"], "opaque");
    let next = s["next_batch"].as_str().unwrap().to_owned();
    let again = bob.sync(Some(&next), "timeout=0").await;
    assert!(again["to_device"]["events"].as_array().is_none_or(Vec::is_empty), "{again}");
    // `*` reaches every device of the user.
    alice
        .ok(
            Method::PUT,
            "/_matrix/client/v3/sendToDevice/org.example.ping/t2",
            Some(&json!({ "messages": { &bob.user_id: { "*": { "n": 1 } } } })),
        )
        .await;
    let s = bob.sync(Some(&next), "timeout=0").await;
    assert_eq!(s["to_device"]["events"][0]["type"], "org.example.ping");
    let next = s["next_batch"].as_str().unwrap().to_owned();

    // Device lists: Alice's new device shows as a change to Bob, in /sync and /keys/changes.
    let c = server.client();
    let (_, login) = c
        .post("/_matrix/client/v3/login", &json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "correct horse", "device_id": "NEWDEV" }))
        .await;
    let mut alice2 = alice.clone();
    alice2.token = Some(login["access_token"].as_str().unwrap().to_owned());
    alice2.device_id = "NEWDEV".into();
    // The login alone is a change (the device is listed before it has keys), to Bob and to
    // Alice's other device; so is a new name.
    let s = bob.sync(Some(&next), "timeout=0").await;
    assert_eq!(s["device_lists"]["changed"], json!([alice.user_id]), "{s}");
    let alice_since = alice.sync(None, "").await["next_batch"].as_str().unwrap().to_owned();
    let bob_since = s["next_batch"].as_str().unwrap().to_owned();
    alice2.ok(Method::PUT, "/_matrix/client/v3/devices/NEWDEV", Some(&json!({ "display_name": "Poste" }))).await;
    let s = bob.sync(Some(&bob_since), "timeout=0").await;
    assert_eq!(s["device_lists"]["changed"], json!([alice.user_id]), "{s}");
    let s = alice.sync(Some(&alice_since), "timeout=0").await;
    assert_eq!(s["device_lists"]["changed"], json!([alice.user_id]), "{s}");
    let dev = Device::new(&alice2, 3);
    alice2.ok(Method::POST, "/_matrix/client/v3/keys/upload", Some(&json!({ "device_keys": dev.device_keys() }))).await;
    let s = bob.sync(Some(&next), "timeout=0").await;
    assert_eq!(s["device_lists"]["changed"], json!([alice.user_id]), "{s}");
    let changes = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/keys/changes?from={next}&to={}", s["next_batch"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(changes["changed"], json!([alice.user_id]));
    // Deleting the device is a change too, and its keys are gone.
    let next = s["next_batch"].as_str().unwrap().to_owned();
    alice2.ok(Method::POST, "/_matrix/client/v3/logout", Some(&json!({}))).await;
    let s = bob.sync(Some(&next), "timeout=0").await;
    assert_eq!(s["device_lists"]["changed"], json!([alice.user_id]));
    let q = bob
        .ok(
            Method::POST,
            "/_matrix/client/v3/keys/query",
            Some(&json!({ "device_keys": { &alice.user_id: ["NEWDEV"] } })),
        )
        .await;
    assert_eq!(q["device_keys"][&alice.user_id], json!({}));
    assert_error(&bob.get("/_matrix/client/v3/keys/changes?from=x&to=y").await, 400, "M_INVALID_PARAM");

    // Starting to share a room is a change; sharing none any more is a `left`.
    let carol = server.register("carol").await;
    let next = s["next_batch"].as_str().unwrap().to_owned();
    carol.join(&room).await;
    let s = bob.sync(Some(&next), "timeout=0").await;
    assert_eq!(s["device_lists"]["changed"], json!([carol.user_id]), "{s}");
    let next = s["next_batch"].as_str().unwrap().to_owned();
    carol.ok(Method::POST, &format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&json!({}))).await;
    let s = bob.sync(Some(&next), "timeout=0").await;
    assert_eq!(s["device_lists"]["left"], json!([carol.user_id]), "{s}");
    assert!(s["device_lists"]["changed"].as_array().is_none_or(Vec::is_empty), "{s}");
    // /keys/changes says the same.
    let path = format!("/_matrix/client/v3/keys/changes?from={next}&to={}", s["next_batch"].as_str().unwrap());
    let changes = bob.ok(Method::GET, &path, None).await;
    assert_eq!((&changes["changed"], &changes["left"]), (&json!([]), &json!([carol.user_id])), "{changes}");
}

mod cross_signing_and_backup {
    use super::*;

    backend_tests!(cross_signing_keys_and_signatures, key_backup_versions_and_keys);

    /// A cross-signing key of `user` with the given usage.
    fn cs_key(user: &str, usage: &str, key: &SigningKey) -> Value {
        let public = STANDARD_NO_PAD.encode(key.verifying_key().to_bytes());
        json!({ "user_id": user, "usage": [usage], "keys": { format!("ed25519:{public}"): public } })
    }

    /// Signs `object` as `user` with `key`, under the key id `ed25519:<public>`.
    fn sign_with(object: &Value, user: &str, key: &SigningKey) -> Value {
        let public = STANDARD_NO_PAD.encode(key.verifying_key().to_bytes());
        let signer = Device { key: key.clone(), user: user.to_owned(), id: public };
        let mut signed = signer.sign(object.clone());
        // Keep signatures already there (sign() replaces them).
        if let Some(existing) = object.get("signatures").and_then(Value::as_object) {
            for (u, sigs) in existing {
                for (k, v) in sigs.as_object().unwrap() {
                    signed["signatures"][u][k] = v.clone();
                }
            }
        }
        signed
    }

    async fn cross_signing_keys_and_signatures(backend: Backend) {
        let server = TestServer::start(backend, &[]).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let (master, ssk, usk) =
            (SigningKey::from_bytes(&[11; 32]), SigningKey::from_bytes(&[12; 32]), SigningKey::from_bytes(&[13; 32]));
        let master_key = cs_key(&alice.user_id, "master", &master);
        let upload = json!({
            "master_key": master_key,
            "self_signing_key": sign_with(&cs_key(&alice.user_id, "self_signing", &ssk), &alice.user_id, &master),
            "user_signing_key": sign_with(&cs_key(&alice.user_id, "user_signing", &usk), &alice.user_id, &master),
        });
        // A self-signing key not signed by the master key is refused.
        let unsigned =
            json!({ "master_key": master_key, "self_signing_key": cs_key(&alice.user_id, "self_signing", &ssk) });
        assert_error(
            &alice.post("/_matrix/client/v3/keys/device_signing/upload", &unsigned).await,
            400,
            "M_INVALID_PARAM",
        );
        // The first upload needs no password; replacing the keys does.
        alice.ok(Method::POST, "/_matrix/client/v3/keys/device_signing/upload", Some(&upload)).await;
        let (status, uia) = alice.post("/_matrix/client/v3/keys/device_signing/upload", &upload).await;
        assert_eq!(status, 401, "{uia}");
        let mut with_auth = upload.clone();
        with_auth["auth"] = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "correct horse", "session": uia["session"] });
        alice.ok(Method::POST, "/_matrix/client/v3/keys/device_signing/upload", Some(&with_auth)).await;

        // Others see the master and self-signing keys; only Alice sees her user-signing key.
        let q = bob
            .ok(Method::POST, "/_matrix/client/v3/keys/query", Some(&json!({ "device_keys": { &alice.user_id: [] } })))
            .await;
        assert_eq!(q["master_keys"][&alice.user_id]["keys"], master_key["keys"]);
        assert!(q["self_signing_keys"][&alice.user_id].is_object());
        assert!(q.get("user_signing_keys").is_none_or(|u| u.get(&alice.user_id).is_none()), "{q}");
        let q = alice
            .ok(Method::POST, "/_matrix/client/v3/keys/query", Some(&json!({ "device_keys": { &alice.user_id: [] } })))
            .await;
        assert!(q["user_signing_keys"][&alice.user_id].is_object());

        // Alice's self-signing key signs her device: the signature shows in /keys/query.
        let dev = Device::new(&alice, 21);
        alice
            .ok(Method::POST, "/_matrix/client/v3/keys/upload", Some(&json!({ "device_keys": dev.device_keys() })))
            .await;
        let signed_device = sign_with(&dev.device_keys(), &alice.user_id, &ssk);
        let r = alice
            .ok(
                Method::POST,
                "/_matrix/client/v3/keys/signatures/upload",
                Some(&json!({ &alice.user_id: { &alice.device_id: signed_device } })),
            )
            .await;
        assert_eq!(r["failures"], json!({}));
        let q = bob
            .ok(Method::POST, "/_matrix/client/v3/keys/query", Some(&json!({ "device_keys": { &alice.user_id: [] } })))
            .await;
        let ssk_id = format!("ed25519:{}", STANDARD_NO_PAD.encode(ssk.verifying_key().to_bytes()));
        assert!(
            q["device_keys"][&alice.user_id][&alice.device_id]["signatures"][&alice.user_id][&ssk_id].is_string(),
            "{q}"
        );
        // A signature made with another key is reported as a failure and changes nothing.
        let forged = sign_with(&dev.device_keys(), &alice.user_id, &SigningKey::from_bytes(&[99; 32]));
        let r = alice
            .ok(
                Method::POST,
                "/_matrix/client/v3/keys/signatures/upload",
                Some(&json!({ &alice.user_id: { &alice.device_id: forged } })),
            )
            .await;
        assert_eq!(r["failures"][&alice.user_id][&alice.device_id]["errcode"], "M_INVALID_SIGNATURE");

        // Bob verifies Alice: his user-signing key signs her master key; he sees it, Alice does not.
        let (bob_master, bob_usk) = (SigningKey::from_bytes(&[31; 32]), SigningKey::from_bytes(&[33; 32]));
        let bob_upload = json!({
            "master_key": cs_key(&bob.user_id, "master", &bob_master),
            "user_signing_key": sign_with(&cs_key(&bob.user_id, "user_signing", &bob_usk), &bob.user_id, &bob_master),
        });
        bob.ok(Method::POST, "/_matrix/client/v3/keys/device_signing/upload", Some(&bob_upload)).await;
        let bob_since = bob.sync(None, "").await["next_batch"].as_str().unwrap().to_owned();
        let alice_since = alice.sync(None, "").await["next_batch"].as_str().unwrap().to_owned();
        let master_public = STANDARD_NO_PAD.encode(master.verifying_key().to_bytes());
        let signed_master = sign_with(&master_key, &bob.user_id, &bob_usk);
        let r = bob
            .ok(
                Method::POST,
                "/_matrix/client/v3/keys/signatures/upload",
                Some(&json!({ &alice.user_id: { &master_public: signed_master } })),
            )
            .await;
        assert_eq!(r["failures"], json!({}), "{r}");
        let q = bob
            .ok(Method::POST, "/_matrix/client/v3/keys/query", Some(&json!({ "device_keys": { &alice.user_id: [] } })))
            .await;
        assert!(q["master_keys"][&alice.user_id]["signatures"][&bob.user_id].is_object(), "{q}");
        // Bob's devices hear that Alice's keys changed (they fetch them again and see Bob's
        // signature), though Bob and Alice share no room; Alice hears of nothing.
        let s = bob.sync(Some(&bob_since), "timeout=0").await;
        let changed = s["device_lists"]["changed"].as_array().cloned().unwrap_or_default();
        assert!(changed.contains(&json!(alice.user_id)), "{s}");
        let s = alice.sync(Some(&alice_since), "timeout=0").await;
        let changed = s["device_lists"]["changed"].as_array().cloned().unwrap_or_default();
        assert!(!changed.contains(&json!(bob.user_id)) && !changed.contains(&json!(alice.user_id)), "{s}");
        let q = server
            .register("carol")
            .await
            .ok(Method::POST, "/_matrix/client/v3/keys/query", Some(&json!({ "device_keys": { &alice.user_id: [] } })))
            .await;
        assert!(q["master_keys"][&alice.user_id]["signatures"].get(&bob.user_id).is_none());
    }

    async fn key_backup_versions_and_keys(backend: Backend) {
        let server = TestServer::start(backend, &[]).await;
        let alice = server.register("alice").await;
        assert_error(&alice.get("/_matrix/client/v3/room_keys/version").await, 404, "M_NOT_FOUND");
        let algorithm =
            json!({ "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": { "public_key": "cHVibGlj" } });
        let v1 = alice.ok(Method::POST, "/_matrix/client/v3/room_keys/version", Some(&algorithm)).await["version"]
            .as_str()
            .unwrap()
            .to_owned();
        let info = alice.ok(Method::GET, "/_matrix/client/v3/room_keys/version", None).await;
        assert_eq!((info["version"].clone(), info["count"].clone()), (json!(v1), json!(0)));
        let etag0 = info["etag"].clone();

        let key = |index: u64, verified: bool| json!({ "first_message_index": index, "forwarded_count": 0, "is_verified": verified, "session_data": { "ciphertext": format!("c{index}") } });
        let put = json!({ "rooms": { "!r:localhost": { "sessions": { "s1": key(5, false), "s2": key(0, true) } } } });
        let r = alice.ok(Method::PUT, &format!("/_matrix/client/v3/room_keys/keys?version={v1}"), Some(&put)).await;
        assert_eq!(r["count"], 2);
        assert_ne!(r["etag"], etag0);
        // A better key (lower index) replaces; a worse one does not.
        alice
            .ok(
                Method::PUT,
                &format!("/_matrix/client/v3/room_keys/keys/!r:localhost/s1?version={v1}"),
                Some(&key(1, false)),
            )
            .await;
        alice
            .ok(
                Method::PUT,
                &format!("/_matrix/client/v3/room_keys/keys/!r:localhost?version={v1}"),
                Some(&json!({ "sessions": { "s2": key(9, false) } })),
            )
            .await;
        let s1 = alice
            .ok(Method::GET, &format!("/_matrix/client/v3/room_keys/keys/!r:localhost/s1?version={v1}"), None)
            .await;
        assert_eq!(s1["first_message_index"], 1);
        let room =
            alice.ok(Method::GET, &format!("/_matrix/client/v3/room_keys/keys/!r:localhost?version={v1}"), None).await;
        assert_eq!(room["sessions"]["s2"]["first_message_index"], 0);
        let all = alice.ok(Method::GET, &format!("/_matrix/client/v3/room_keys/keys?version={v1}"), None).await;
        assert_eq!(all["rooms"]["!r:localhost"]["sessions"].as_object().unwrap().len(), 2);
        assert_error(
            &alice.get(&format!("/_matrix/client/v3/room_keys/keys/!r:localhost/nope?version={v1}")).await,
            404,
            "M_NOT_FOUND",
        );

        // Only the current version takes keys.
        let v2 = alice.ok(Method::POST, "/_matrix/client/v3/room_keys/version", Some(&algorithm)).await["version"]
            .as_str()
            .unwrap()
            .to_owned();
        let old = alice.put(&format!("/_matrix/client/v3/room_keys/keys?version={v1}"), &put).await;
        assert_error(&old, 403, "M_WRONG_ROOM_KEYS_VERSION");
        assert_eq!(old.1["current_version"], v2.as_str());
        // The algorithm of a version cannot change; deleting removes it.
        let other = json!({ "algorithm": "org.example.other", "auth_data": {} });
        assert_error(
            &alice.put(&format!("/_matrix/client/v3/room_keys/version/{v2}"), &other).await,
            400,
            "M_INVALID_PARAM",
        );
        let mut updated = algorithm.clone();
        updated["auth_data"]["signatures"] = json!({});
        alice.ok(Method::PUT, &format!("/_matrix/client/v3/room_keys/version/{v2}"), Some(&updated)).await;
        alice
            .ok(Method::DELETE, &format!("/_matrix/client/v3/room_keys/keys/!r:localhost/s1?version={v1}"), None)
            .await;
        assert_eq!(
            alice.ok(Method::GET, &format!("/_matrix/client/v3/room_keys/version/{v1}"), None).await["count"],
            1
        );
        alice.ok(Method::DELETE, &format!("/_matrix/client/v3/room_keys/version/{v2}"), None).await;
        assert_error(&alice.get(&format!("/_matrix/client/v3/room_keys/version/{v2}")).await, 404, "M_NOT_FOUND");
        assert_eq!(alice.ok(Method::GET, "/_matrix/client/v3/room_keys/version", None).await["version"], v1.as_str());
    }
}

/// Syncs `client` until `found` holds (20 s at most), from `since`; answers that response.
async fn sync_until(client: &Client, since: Option<String>, found: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut since = since;
    loop {
        let v = client.sync(since.as_deref(), "timeout=1000").await;
        if found(&v) {
            return v;
        }
        since = v["next_batch"].as_str().map(str::to_owned);
        assert!(std::time::Instant::now() < deadline, "not seen in time; last sync: {v}");
    }
}

fn changed(v: &Value, user: &str) -> bool {
    v["device_lists"]["changed"].as_array().is_some_and(|c| c.iter().any(|u| u == user))
}

/// Another server's user's devices: fetched once a room is shared, followed as they change
/// (their server's `m.device_list_update`), answered from the list kept when their server
/// is down, and forgotten when no room is shared anymore.
async fn remote_device_lists_are_kept_and_followed(backend: Backend) {
    let a = TestServer::start_federating(backend, &[]).await;
    let mut b = TestServer::start_federating(backend, &[]).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let dev = Device::new(&bob, 7);
    bob.ok(Method::POST, "/_matrix/client/v3/keys/upload", Some(&json!({ "device_keys": dev.device_keys() }))).await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let join = format!("/_matrix/client/v3/join/{}?via={}", urlencode(&room), urlencode(&a.server_name));
    bob.ok(Method::POST, &join, Some(&json!({}))).await;
    let query = json!({ "device_keys": { &bob.user_id: [] } });
    let first = alice.ok(Method::POST, "/_matrix/client/v3/keys/query", Some(&query)).await;
    assert_eq!(
        first["device_keys"][&bob.user_id][&bob.device_id]["keys"][format!("ed25519:{}", bob.device_id)],
        dev.public()
    );
    assert_eq!(first["failures"], json!({}), "{first}");

    // Bob signs in on a second device: B tells A, Alice's sync says so, her query shows it.
    let since = alice.sync(None, "").await["next_batch"].as_str().map(str::to_owned);
    let phone = b.login("bob", "correct horse").await;
    let phone_dev = Device::new(&phone, 8);
    phone
        .ok(Method::POST, "/_matrix/client/v3/keys/upload", Some(&json!({ "device_keys": phone_dev.device_keys() })))
        .await;
    sync_until(&alice, since, |v| changed(v, &bob.user_id)).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let second = loop {
        let v = alice.ok(Method::POST, "/_matrix/client/v3/keys/query", Some(&query)).await;
        if v["device_keys"][&bob.user_id][&phone.device_id]["keys"].is_object() {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "the second device never showed: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(second["device_keys"][&bob.user_id].as_object().unwrap().len(), 2, "{second}");

    // B goes down: A still answers what it keeps, with no failure.
    b.kill().await;
    let down = alice.ok(Method::POST, "/_matrix/client/v3/keys/query", Some(&query)).await;
    assert_eq!(down["device_keys"], second["device_keys"]);
    assert_eq!(down["failures"], json!({}), "{down}");

    // Alice leaves: no local user shares a room with Bob anymore, A forgets his list and
    // asks B again (down: a failure, not a stale answer).
    alice.ok(Method::POST, &format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&json!({}))).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let v = alice.ok(Method::POST, "/_matrix/client/v3/keys/query", Some(&query)).await;
        if v["failures"].get(&b.server_name).is_some() {
            assert!(
                v["device_keys"].get(&bob.user_id).is_none_or(|d| d.as_object().is_some_and(|d| d.is_empty())),
                "{v}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still answered from a list no room justifies: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
