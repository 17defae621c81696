//! A real client library with its own end-to-end encryption (matrix-rust-sdk, vodozemac)
//! against the real server: two users exchange encrypted messages and each decrypts the
//! other's; a third device of one of them joins later and decrypts new messages;
//! cross-signing bootstrap and key backup creation succeed.

use std::time::Duration;

use diplomatie_rust_sdk_tests::{Backend, Server};
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
async fn encrypted_messages_on_sqlite() {
    encrypted_messages_between_real_clients(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_messages_on_postgres() {
    encrypted_messages_between_real_clients(Backend::Postgres).await;
}

async fn login(server: &Server, user: &str, device: &str) -> (Client, mpsc::UnboundedReceiver<String>) {
    diplomatie_rust_sdk_tests::login(&server.base, user, device).await
}

async fn receive(client: &Client, rx: &mut mpsc::UnboundedReceiver<String>, body: &str) {
    if !diplomatie_rust_sdk_tests::received(client, rx, body, 40).await {
        panic!("{} never decrypted {body:?}", client.user_id().unwrap());
    }
}

async fn encrypted_messages_between_real_clients(backend: Backend) {
    let server = Server::start(backend).await;
    server.register("alice").await;
    server.register("bob").await;
    let (alice, mut alice_rx) = login(&server, "alice", "ALICEDEV").await;
    let (bob, mut bob_rx) = login(&server, "bob", "BOBPHONE").await;
    let bob_id: OwnedUserId = bob.user_id().unwrap().to_owned();

    let mut request = CreateRoom::new();
    request.invite = vec![bob_id.clone()];
    let room = alice.create_room(request).await.expect("create room");
    room.enable_encryption().await.expect("enable encryption");
    bob.sync_once(SyncSettings::default().timeout(Duration::ZERO)).await.unwrap();
    bob.join_room_by_id(room.room_id()).await.expect("join");
    alice.sync_once(SyncSettings::default().timeout(Duration::ZERO)).await.unwrap();
    assert!(room.latest_encryption_state().await.unwrap().is_encrypted());

    room.send(RoomMessageEventContent::text_plain("Télégramme chiffré")).await.expect("send");
    receive(&bob, &mut bob_rx, "Télégramme chiffré").await;
    let bob_room = bob.get_room(room.room_id()).unwrap();
    bob_room.send(RoomMessageEventContent::text_plain("Bien reçu")).await.expect("reply");
    receive(&alice, &mut alice_rx, "Bien reçu").await;

    // Bob's new device joins later and reads what is sent after.
    let (bob2, mut bob2_rx) = login(&server, "bob", "BOBLAPTOP").await;
    alice.sync_once(SyncSettings::default().timeout(Duration::ZERO)).await.unwrap();
    room.send(RoomMessageEventContent::text_plain("Pour tous vos appareils")).await.expect("send again");
    receive(&bob2, &mut bob2_rx, "Pour tous vos appareils").await;

    // Cross-signing and key backup, as Element sets them up.
    alice.encryption().bootstrap_cross_signing(None).await.expect("cross-signing bootstrap");
    let status = alice.encryption().cross_signing_status().await.expect("status");
    assert!(status.is_complete(), "{status:?}");
    alice.encryption().backups().create().await.expect("backup creation");
    assert!(alice.encryption().backups().are_enabled().await);
}
