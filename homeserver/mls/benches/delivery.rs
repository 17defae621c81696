//! The delivery service's cost per commit: for groups of 10, 100 and 1,000 devices, how many
//! commits per second the server validates and applies (load the saved state, check, merge,
//! save: what `Mls::commit` does besides the database), and how large the saved state is; and
//! how many application messages per second it checks, from the saved state (what each message
//! cost before the summary) and from the group's summary (what `Mls::send` does now).
//! Run: `cargo bench -p diplomatie-mls`.

use std::time::Instant;

use diplomatie_mls::{
    ds::{check_key_package, Group},
    member::{server_external_sender, Device},
    Identity,
};

const GROUP: &[u8] = b"!bench:diplomatie.test";

fn device(i: usize) -> Device {
    let mut seed = [1; 32];
    seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
    Device::new(Identity::new(format!("@u{i}:bench"), "D"), &seed, None).unwrap()
}

fn main() {
    let server =
        server_external_sender("bench", &ed25519_dalek::SigningKey::from_bytes(&[42; 32]).verifying_key().to_bytes());
    // Key packages checked per second (what an upload costs the server).
    let d = device(0);
    let packages: Vec<Vec<u8>> = (0..200).map(|_| d.key_package(false).unwrap()).collect();
    let t = Instant::now();
    for p in &packages {
        check_key_package(p).unwrap();
    }
    println!("key packages verified: {:.0}/s", packages.len() as f64 / t.elapsed().as_secs_f64());

    for size in [10usize, 100, 1000] {
        let creator = device(0);
        let (info, tree) = creator.create_group(GROUP, server.clone()).unwrap();
        let mut ds = Group::create(&info, &tree).unwrap();
        let others: Vec<Vec<u8>> = (1..size).map(|i| device(i).key_package(false).unwrap()).collect();
        let add = creator.add(GROUP, &others).unwrap();
        let staged = ds.check_commit(&add.commit).unwrap();
        ds.merge(staged).unwrap();
        creator.merge_pending(GROUP).unwrap();
        let mut saved = ds.save();
        let rounds = if size >= 1000 { 20 } else { 100 };
        let mut busy = std::time::Duration::ZERO;
        for _ in 0..rounds {
            let commit = creator.update(GROUP).unwrap().commit;
            let t = Instant::now();
            let mut group = Group::load(&saved, GROUP).unwrap();
            let staged = group.check_commit(&commit).unwrap();
            group.merge(staged).unwrap();
            saved = group.save();
            busy += t.elapsed();
            creator.merge_pending(GROUP).unwrap();
        }
        println!(
            "group of {size:>4} devices: {:>7.0} commits/s validated and applied ({:.2} ms each), state {} KiB",
            rounds as f64 / busy.as_secs_f64(),
            busy.as_secs_f64() * 1000.0 / rounds as f64,
            saved.len() / 1024
        );
        let messages: Vec<Vec<u8>> =
            (0..rounds).map(|i| creator.encrypt(GROUP, format!("m{i}").as_bytes()).unwrap()).collect();
        let t = Instant::now();
        for m in &messages {
            Group::load(&saved, GROUP).unwrap().check_application(m).unwrap();
        }
        let loaded = messages.len() as f64 / t.elapsed().as_secs_f64();
        let summary = Group::load(&saved, GROUP).unwrap().summary();
        let many: Vec<&Vec<u8>> = messages.iter().cycle().take(20_000).collect();
        let t = Instant::now();
        for m in &many {
            assert!(summary.members.contains(&creator.identity));
            summary.check_application(m).unwrap();
        }
        let summarised = many.len() as f64 / t.elapsed().as_secs_f64();
        println!("group of {size:>4} devices: messages checked {loaded:>9.0}/s from the state, {summarised:>9.0}/s from the summary");
    }
}
