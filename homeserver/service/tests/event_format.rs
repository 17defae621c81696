//! The events this server builds are valid PDUs for every room version: content hash, the
//! server's ed25519 signature, event ids from the reference hash, and the redaction algorithm
//! that keeps signatures verifiable. Checked with ruma's verifier, independently of the builder.

use std::collections::BTreeMap;

use diplomatie_service::{rooms::create::SUPPORTED_ROOM_VERSIONS, Config, Services};
use ruma::{
    api::client::room::create_room::v3::Request as CreateRoom,
    events::StateEventType,
    serde::Base64,
    signatures::{verify_event, Verified},
    RoomVersionId,
};
use serde_json::json;

async fn services() -> (std::sync::Arc<Services>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { data_dir: dir.path().to_owned(), ..Config::default() };
    (Services::start(config).await.unwrap(), dir)
}

fn public_keys(s: &Services) -> ruma::signatures::PublicKeyMap {
    let mut set = BTreeMap::new();
    set.insert(s.keys.key_id(), Base64::new(s.keys.keypair.public_key().to_vec()));
    let mut map = BTreeMap::new();
    map.insert(s.server_name().to_string(), set);
    map
}

#[tokio::test]
async fn every_event_verifies_in_every_room_version() {
    let (s, _dir) = services().await;
    let alice = s.accounts.create_account(Some("alice"), Some("pw"), false, None).await.unwrap();
    let keys = public_keys(&s);
    for v in SUPPORTED_ROOM_VERSIONS {
        let version = RoomVersionId::try_from(*v).unwrap();
        let rules = version.rules().unwrap();
        let mut req = CreateRoom::new();
        req.room_version = Some(version.clone());
        req.name = Some(format!("v{v}"));
        let room_id = s.membership.create_room(&alice, req).await.unwrap();
        let device = ruma::OwnedDeviceId::from("DEV");
        let txn = ruma::OwnedTransactionId::from(format!("t{v}"));
        let msg = s
            .timeline
            .send_message(&alice, &device, &room_id, "m.room.message", &txn, json!({ "body": "x" }))
            .await
            .unwrap();
        let state = s.rooms.current_state(&room_id).await.unwrap();
        let mut ids: Vec<_> = state.values().cloned().collect();
        ids.push(msg.clone());
        for id in &ids {
            let pdu = s.rooms.get_pdu(id).await.unwrap().unwrap();
            let object = pdu.canonical_object().unwrap();
            assert_eq!(verify_event(&keys, &object, &rules).unwrap(), Verified::All, "v{v} {id}");
            if rules.event_id_format != ruma::room_version_rules::EventIdFormatVersion::V1 {
                let hash = ruma::signatures::reference_hash(&object, &rules).unwrap();
                assert_eq!(id.as_str(), format!("${hash}"), "v{v}: the event id is the reference hash");
            }
        }
        // A tampered event no longer verifies.
        let pdu = s.rooms.get_pdu(&msg).await.unwrap().unwrap();
        let mut object = pdu.canonical_object().unwrap();
        object.insert("origin_server_ts".into(), ruma::CanonicalJsonValue::Integer(ruma::Int::from(1u32)));
        assert!(verify_event(&keys, &object, &rules).is_err(), "v{v}: tampering is detected");
        // Content changes keep the signature (it covers the redacted form) but fail the hash.
        let mut object = pdu.canonical_object().unwrap();
        object.insert("content".into(), ruma::CanonicalJsonValue::Object(BTreeMap::new()));
        assert_eq!(verify_event(&keys, &object, &rules).unwrap(), Verified::Signatures, "v{v}");
        // Redaction follows the version's algorithm and the redacted event still verifies.
        let rtxn = ruma::OwnedTransactionId::from(format!("r{v}"));
        s.timeline.redact(&alice, &device, &room_id, &msg, &rtxn, None).await.unwrap();
        let redacted = s.rooms.get_pdu(&msg).await.unwrap().unwrap();
        assert_eq!(redacted.content_value(), json!({}));
        assert!(verify_event(&keys, &redacted.canonical_object().unwrap(), &rules).is_ok(), "v{v}: redacted verifies");
        // v12: the room id is the create event's reference hash.
        if rules.authorization.room_create_event_id_as_room_id {
            let create = state.get(&(StateEventType::RoomCreate, String::new())).unwrap();
            assert_eq!(&room_id.as_str()[1..], &create.as_str()[1..]);
        }
    }
}

#[tokio::test]
async fn state_groups_rebuild_the_same_state_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { data_dir: dir.path().to_owned(), ..Config::default() };
    let s = Services::start(config.clone()).await.unwrap();
    let alice = s.accounts.create_account(Some("alice"), Some("pw"), false, None).await.unwrap();
    let room_id = s.membership.create_room(&alice, CreateRoom::new()).await.unwrap();
    // Past the delta chain length, so that snapshots and deltas both matter.
    for i in 0..150 {
        s.timeline
            .send_state(&alice, &room_id, "org.example.counter", &format!("k{}", i % 40), json!({ "i": i }))
            .await
            .unwrap();
    }
    let before = (*s.rooms.current_state(&room_id).await.unwrap()).clone();
    drop(s);
    let s = Services::start(config).await.unwrap();
    let after = (*s.rooms.current_state(&room_id).await.unwrap()).clone();
    assert_eq!(before, after);
    assert_eq!(after.len(), 5 + 1 + 40, "create, member, power, join rules, history, guest + 40 keys");
    let last =
        s.rooms.state_event(&room_id, &StateEventType::from("org.example.counter"), "k29").await.unwrap().unwrap();
    assert_eq!(last.content_value(), json!({ "i": 149 }));
}
