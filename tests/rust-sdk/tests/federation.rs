//! End-to-end encryption across servers: a user of Diplomatie and a user of Synapse (from PyPI)
//! in an encrypted room, both on matrix-rust-sdk. Their device keys, one-time keys and room
//! keys travel over federation (`user/keys/query`, `user/keys/claim`, `m.direct_to_device`),
//! and each decrypts the other's messages.

use std::time::Duration;

use diplomatie_rust_sdk_tests::{login, received, register, Backend, Server, Synapse};
use matrix_sdk::{
    config::SyncSettings,
    ruma::{
        api::client::room::create_room::v3::Request as CreateRoom, events::room::message::RoomMessageEventContent,
        OwnedUserId,
    },
    Client,
};
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_room_with_synapse_on_sqlite() {
    encrypted_room_with_synapse(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_room_with_synapse_on_postgres() {
    encrypted_room_with_synapse(Backend::Postgres).await;
}

async fn receive(client: &Client, rx: &mut mpsc::UnboundedReceiver<String>, body: &str, synapse: &Synapse) {
    if !received(client, rx, body, 60).await {
        let log = synapse.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!("{} never decrypted {body:?}; Synapse's log ends with:\n{}", client.user_id().unwrap(), tail.join("\n"));
    }
}

async fn sync(client: &Client) {
    client.sync_once(SyncSettings::default().timeout(Duration::ZERO)).await.expect("sync");
}

async fn encrypted_room_with_synapse(backend: Backend) {
    let ours = Server::start_federating(backend).await;
    let synapse = Synapse::start().await;
    ours.register("alice").await;
    register(&synapse.base, "bob").await;
    let (alice, mut alice_rx) = login(&ours.base, "alice", "ALICEDEV").await;
    let (bob, mut bob_rx) = login(&synapse.base, "bob", "BOBPHONE").await;
    let bob_id: OwnedUserId = bob.user_id().unwrap().to_owned();

    let mut request = CreateRoom::new();
    request.invite = vec![bob_id.clone()];
    let room = alice.create_room(request).await.expect("create room");
    room.enable_encryption().await.expect("enable encryption");
    for _ in 0..60 {
        sync(&bob).await;
        if bob.get_room(room.room_id()).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bob.join_room_by_id(room.room_id()).await.expect("join over federation");
    for _ in 0..60 {
        sync(&alice).await;
        if room.get_member(&bob_id).await.ok().flatten().is_some_and(|m| m.membership().to_string() == "join") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    sync(&bob).await;

    room.send(RoomMessageEventContent::text_plain("Télégramme chiffré pour Berlin")).await.expect("send");
    receive(&bob, &mut bob_rx, "Télégramme chiffré pour Berlin", &synapse).await;
    let bob_room = bob.get_room(room.room_id()).unwrap();
    bob_room.send(RoomMessageEventContent::text_plain("Verschlüsselt erhalten")).await.expect("reply");
    receive(&alice, &mut alice_rx, "Verschlüsselt erhalten", &synapse).await;

    // Alice's new device reaches Synapse's copy of her device list, and so does its deletion
    // (an `m.device_list_update` with `deleted: true`).
    let alice_id = alice.user_id().unwrap().to_owned();
    let (tablet, _) = login(&ours.base, "alice", "ALICETAB").await;
    let device_seen = |present: bool| {
        let bob = bob.clone();
        let alice_id = alice_id.clone();
        async move {
            for _ in 0..80 {
                sync(&bob).await;
                let devices = bob.encryption().get_user_devices(&alice_id).await.expect("devices");
                if devices.get(matrix_sdk::ruma::device_id!("ALICETAB")).is_some() == present {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            false
        }
    };
    assert!(device_seen(true).await, "Alice's new device never reached Synapse");
    tablet.matrix_auth().logout().await.expect("log the tablet out");
    assert!(device_seen(false).await, "Synapse still lists Alice's deleted device");
}
