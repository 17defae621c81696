//! End-to-end encryption support: key upload, query, claim and changes, send-to-device and the
//! device lists in `/sync` (client-server spec, "End-to-End Encryption").

use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
use diplomatie_tests::{assert_error, backend_tests, Backend, Client, TestServer};
use ed25519_dalek::{Signer, SigningKey};
use reqwest::Method;
use serde_json::{json, Value};

backend_tests!(keys_upload_query_and_claim, bad_keys_are_refused_and_lose_nothing, to_device_messages_and_device_lists);

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
    assert_eq!(s["device_one_time_keys_count"], json!({}));
    assert_eq!(s["device_unused_fallback_key_types"], json!([]));
    // Claims for unknown devices come back empty.
    let c = bob
        .ok(
            Method::POST,
            "/_matrix/client/v3/keys/claim",
            Some(&json!({ "one_time_keys": { "@nobody:localhost": { "X": "signed_curve25519" } } })),
        )
        .await;
    assert_eq!(c["one_time_keys"]["@nobody:localhost"], json!({}));
}

async fn bad_keys_are_refused_and_lose_nothing(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let alice = server.register("alice").await;
    let dev = Device::new(&alice, 9);
    alice.ok(Method::POST, "/_matrix/client/v3/keys/upload", Some(&json!({ "device_keys": dev.device_keys() }))).await;
    // Signed by another key: refused.
    let impostor =
        Device { key: SigningKey::from_bytes(&[1; 32]), user: alice.user_id.clone(), id: alice.device_id.clone() };
    let forged = json!({ "one_time_keys": { "signed_curve25519:AAAABA": impostor.one_time_key(4) } });
    assert_error(&alice.post("/_matrix/client/v3/keys/upload", &forged).await, 400, "M_INVALID_PARAM");
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
    assert_eq!(again["to_device"]["events"], json!([]));
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
}
