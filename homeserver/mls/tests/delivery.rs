//! The delivery service's checks against real openmls devices: groups created, devices added
//! and welcomed, messages read, concurrent commits ordered, forged and replayed commits
//! refused, the server's own removals enforced.

use diplomatie_mls::{
    ds::{check_key_package, Group},
    member::{server_external_sender, Device, Received},
    Error, Identity,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::types::SignatureScheme;

const GROUP: &[u8] = b"!dr:diplomatie.test";

fn device(user: &str, device: &str) -> Device {
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    Device::new(Identity::new(user, device), &key.to_bytes(), None).unwrap()
}

struct Server {
    signer: SignatureKeyPair,
}

impl Server {
    fn new() -> Server {
        Server { signer: SignatureKeyPair::new(SignatureScheme::ED25519).unwrap() }
    }
    fn sender(&self) -> openmls::prelude::ExternalSender {
        server_external_sender("diplomatie.test", self.signer.public())
    }
}

#[test]
fn a_group_lives_through_the_delivery_service() {
    let server = Server::new();
    let alice = device("@alice:diplomatie.test", "A1");
    let bob = device("@bob:diplomatie.test", "B1");

    // Alice creates the group; the server starts tracking it.
    let (info, tree) = alice.create_group(GROUP, server.sender()).unwrap();
    let mut ds = Group::create(&info, &tree).unwrap();
    assert_eq!(ds.epoch(), 0);
    assert_eq!(ds.group_id(), GROUP);
    assert_eq!(ds.external_sender_index(&server.sender()), Some(0));
    let members = ds.members();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].identity, alice.identity);
    assert_eq!(members[0].signature_key, alice.signature_key());

    // Bob's key package names his device and key.
    let kp = bob.key_package(false).unwrap();
    let checked = check_key_package(&kp).unwrap();
    assert_eq!(checked.leaf.identity, bob.identity);
    assert_eq!(checked.leaf.signature_key, bob.signature_key());
    assert!(!checked.last_resort);
    assert!(check_key_package(&bob.key_package(true).unwrap()).unwrap().last_resort);
    let mut forged = kp.clone();
    let n = forged.len();
    forged[n - 3] ^= 1;
    assert!(matches!(check_key_package(&forged), Err(Error::Invalid(_) | Error::Malformed(_))));

    // Alice adds Bob: the server sees who commits and who comes in.
    let add = alice.add(GROUP, &[kp]).unwrap();
    let staged = ds.check_commit(&add.commit).unwrap();
    assert_eq!(staged.committer.identity, alice.identity);
    assert!(!staged.external);
    assert_eq!(staged.added.iter().map(|l| &l.identity).collect::<Vec<_>>(), vec![&bob.identity]);
    assert!(staged.removed.is_empty());
    ds.merge(staged).unwrap();
    assert_eq!(ds.epoch(), 1);
    assert_eq!(alice.merge_pending(GROUP).unwrap(), 1);
    assert_eq!(bob.join(&add.welcome.unwrap(), Some(&ds.ratchet_tree())).unwrap(), GROUP);
    assert_eq!(bob.epoch(GROUP), Some(1));

    // The state survives a save and a load, on both sides.
    let mut ds = Group::load(&ds.save(), GROUP).unwrap();
    assert_eq!(ds.members().len(), 2);

    // Messages both ways; the server sees only the epoch.
    let hello = bob.encrypt(GROUP, b"hello alice").unwrap();
    assert_eq!(ds.check_application(&hello).unwrap(), 1);
    assert!(!hello.windows(5).any(|w| w == b"hello"));
    assert_eq!(
        alice.receive(GROUP, &hello).unwrap(),
        Received::Application { sender: bob.identity.clone(), plaintext: b"hello alice".to_vec() }
    );
    // A commit is not an application message, and the other way round.
    assert!(matches!(ds.check_commit(&hello), Err(Error::Invalid(_))));

    // Two commits for epoch 1: the first wins, the second is told the epoch moved.
    let a = alice.update(GROUP).unwrap();
    let b = bob.update(GROUP).unwrap();
    let staged = ds.check_commit(&a.commit).unwrap();
    ds.merge(staged).unwrap();
    alice.merge_pending(GROUP).unwrap();
    assert_eq!(ds.check_commit(&b.commit).err(), Some(Error::WrongEpoch { current: 2, got: 1 }));
    // Bob recovers: drops his commit, merges the winner, tries again.
    bob.discard_pending(GROUP).unwrap();
    assert_eq!(bob.receive(GROUP, &a.commit).unwrap(), Received::Commit { epoch: 2, removed_self: false });
    let b = bob.update(GROUP).unwrap();
    let staged = ds.check_commit(&b.commit).unwrap();
    assert_eq!(staged.committer.identity, bob.identity);
    assert_eq!(staged.updated.len(), 1);
    ds.merge(staged).unwrap();
    bob.merge_pending(GROUP).unwrap();
    assert_eq!(alice.receive(GROUP, &b.commit).unwrap(), Received::Commit { epoch: 3, removed_self: false });

    // A replayed commit is of a past epoch; a tampered one does not verify. Neither changes
    // anything.
    assert_eq!(ds.check_commit(&a.commit).err(), Some(Error::WrongEpoch { current: 3, got: 1 }));
    let c = alice.update(GROUP).unwrap();
    // Every byte up to the two MACs (confirmation and membership tags, made with the epoch's
    // secrets, which only members hold and check) is covered by the committer's signature.
    let macs = 2 * (1 + 32);
    for at in 0..c.commit.len() - macs {
        let mut tampered = c.commit.clone();
        tampered[at] ^= 0x40;
        assert!(ds.check_commit(&tampered).is_err(), "byte {at} of {}", c.commit.len());
    }
    alice.discard_pending(GROUP).unwrap();
    assert_eq!(ds.epoch(), 3);

    // A device outside the group cannot commit to it, even with the group's id.
    let carol = device("@carol:diplomatie.test", "C1");
    carol.create_group(GROUP, server.sender()).unwrap();
    let forged = carol.update(GROUP).unwrap();
    assert!(ds.check_commit(&forged.commit).is_err());

    // The server removes Bob's device as the group's external sender: the proposal is kept,
    // a commit must include it, and Bob cannot read what follows.
    let bob_leaf = ds.members().iter().find(|m| m.identity == bob.identity).unwrap().index.unwrap();
    let proposal = ds.propose_removal(bob_leaf, &server.signer, 0).unwrap();
    assert_eq!(ds.pending_removals(), vec![bob_leaf]);
    assert_eq!(alice.receive(GROUP, &proposal).unwrap(), Received::Proposal);
    let removal = alice.commit_pending(GROUP).unwrap();
    let staged = ds.check_commit(&removal.commit).unwrap();
    assert!(ds.includes_pending_removals(&staged));
    assert_eq!(staged.removed.iter().map(|l| &l.identity).collect::<Vec<_>>(), vec![&bob.identity]);
    ds.merge(staged).unwrap();
    alice.merge_pending(GROUP).unwrap();
    assert!(ds.pending_removals().is_empty());
    let secret = alice.encrypt(GROUP, b"after bob").unwrap();
    assert_eq!(bob.receive(GROUP, &proposal).unwrap(), Received::Proposal);
    assert_eq!(bob.receive(GROUP, &removal.commit).unwrap(), Received::Commit { epoch: 4, removed_self: true });
    assert!(bob.receive(GROUP, &secret).is_err());
}
