//! `diplomatie-mls-load`: measures the MLS delivery service over HTTP, against a running
//! Diplomatie (registration open, rate limits off, an administrator to clear the users):
//!
//! - **commit to sync**: a group of `--members` devices (each its own user, cleared DR and
//!   approved); one device commits key rotations, one after the other, while every other
//!   member long-polls `/sync`; the time from a commit's upload to each member's sync seeing
//!   it, p50 and p99 over all (commit, member) pairs;
//! - **key package claims per second**: `--claims` claims (at most what the members' devices
//!   hold: 100 each) by `--concurrency` claimers at once.
//!
//! `clients/mls/bench.sh` starts a server and runs it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use clap::Parser;
use diplomatie_client::Client;
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8008")]
    url: String,
    #[arg(long, default_value = "root")]
    admin_user: String,
    #[arg(long, default_value = "pw")]
    admin_password: String,
    /// Devices in the group (each of its own user).
    #[arg(long, default_value_t = 20)]
    members: usize,
    /// Commits timed.
    #[arg(long, default_value_t = 100)]
    commits: usize,
    /// Key package claims timed.
    #[arg(long, default_value_t = 2000)]
    claims: usize,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

/// One request ([`diplomatie_client::call`]): the load stops at any error but the 401 that
/// opens a registration.
async fn call(
    http: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> Value {
    match diplomatie_client::call(http, base, token, method, path, body).await {
        Ok(v) => v,
        Err(diplomatie_client::Error::Server { status: 401, body, .. }) => body,
        Err(e) => panic!("{path}: {e}"),
    }
}

/// Registers a user (open registration, `m.login.dummy`).
async fn register(http: &reqwest::Client, base: &str, name: &str) {
    let path = "/_matrix/client/v3/register";
    let mut body = json!({ "username": name, "password": "load-password" });
    let first = call(http, base, None, reqwest::Method::POST, path, Some(&body)).await;
    body["auth"] = json!({ "type": "m.login.dummy", "session": first["session"] });
    call(http, base, None, reqwest::Method::POST, path, Some(&body)).await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let base = args.url.trim_end_matches('/').to_owned();
    let http = reqwest::Client::new();
    let dir = std::env::temp_dir().join(format!("diplomatie-mls-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let login = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": args.admin_user }, "password": args.admin_password });
    let admin = call(&http, &base, None, reqwest::Method::POST, "/_matrix/client/v3/login", Some(&login)).await
        ["access_token"]
        .as_str()
        .expect("the administrator logs in")
        .to_owned();
    let run = rand::random::<u32>();
    let mut clients = Vec::new();
    for i in 0..args.members {
        let name = format!("mls{run}x{i}");
        register(&http, &base, &name).await;
        let client = Client::login(&dir.join(format!("{name}.json")), &base, &name, "load-password").await.unwrap();
        let user = format!("/_diplomatie/admin/v1/users/{}", diplomatie_client::enc(client.user_id()));
        let (put, admin) = (reqwest::Method::PUT, Some(admin.as_str()));
        call(&http, &base, admin, put.clone(), &format!("{user}/clearance"), Some(&json!({ "clearance": "DR" }))).await;
        let device = format!("{user}/devices/{}/clearance", diplomatie_client::enc(client.device_id()));
        call(&http, &base, admin, put, &device, Some(&json!({ "dr": true }))).await;
        clients.push(client);
    }
    let mut committer = clients.remove(0);
    let room = committer.create_room(Some("load")).await.unwrap();
    for c in &mut clients {
        committer.invite(&room, c.user_id()).await.unwrap();
        c.join(&room).await.unwrap();
    }
    let users: Vec<String> = clients.iter().map(|c| c.user_id().to_owned()).collect();
    for user in &users {
        committer.add(&room, user).await.unwrap();
    }
    for c in &mut clients {
        c.sync(0).await.unwrap();
        assert!(c.epoch(&room).is_some(), "{} joined the group", c.user_id());
    }

    // Commit to sync: every member long-polls; the arrival of each commit event is noted.
    let seen: Arc<Mutex<HashMap<u64, Vec<Instant>>>> = Default::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut pollers = Vec::new();
    for c in &mut clients {
        // A fresh position: the sync loop below sees only the timed commits.
        c.sync(0).await.unwrap();
        let token = c.access_token().to_owned();
        let mut since = c.since().map(str::to_owned);
        let (http, base, room, seen, stop) = (http.clone(), base.clone(), room.clone(), seen.clone(), stop.clone());
        pollers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut path = "/_matrix/client/v3/sync?timeout=2000".to_owned();
                if let Some(s) = &since {
                    path.push_str(&format!("&since={}", diplomatie_client::enc(s)));
                }
                let v = call(&http, &base, Some(&token), reqwest::Method::GET, &path, None).await;
                let now = Instant::now();
                since = v["next_batch"].as_str().map(str::to_owned);
                for e in v["rooms"]["join"][&room]["timeline"]["events"].as_array().into_iter().flatten() {
                    if e["type"] == diplomatie_mls::COMMIT_EVENT {
                        let epoch = e["content"]["epoch"].as_u64().unwrap_or_default();
                        seen.lock().unwrap().entry(epoch).or_default().push(now);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut sent = HashMap::new();
    for _ in 0..args.commits {
        let epoch = committer.epoch(&room).unwrap();
        sent.insert(epoch, Instant::now());
        committer.rotate(&room).await.unwrap();
        // Each commit waits until every member saw it, so the timings do not queue.
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.lock().unwrap().get(&epoch).map_or(0, Vec::len) < clients.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut latencies: Vec<Duration> = Vec::new();
    for (epoch, at) in &sent {
        for arrival in seen.lock().unwrap().get(epoch).into_iter().flatten() {
            latencies.push(arrival.saturating_duration_since(*at));
        }
    }
    latencies.sort();
    let expected = args.commits * clients.len();
    println!(
        "commit to sync, {} devices, {} commits: p50 {:.1} ms, p99 {:.1} ms ({} of {} deliveries seen)",
        args.members,
        args.commits,
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        latencies.len(),
        expected
    );
    for p in pollers {
        let _ = p.await;
    }

    // Key package claims: every member tops its device up to the server's limit (100 a
    // device); claimers take them, round-robin over the members, concurrently.
    let mut available = 0;
    for c in clients.iter_mut() {
        available += c.publish_key_packages(100 - diplomatie_client::KEY_PACKAGES).await.unwrap() as usize;
    }
    let claims = args.claims.min(available);
    let token = committer.access_token().to_owned();
    let users: Arc<Vec<String>> = Arc::new(clients.iter().map(|c| c.user_id().to_owned()).collect());
    let started = Instant::now();
    let per_task = claims / args.concurrency;
    let mut tasks = Vec::new();
    for task in 0..args.concurrency {
        let (http, base, token, users) = (http.clone(), base.clone(), token.clone(), users.clone());
        tasks.push(tokio::spawn(async move {
            let path = "/_diplomatie/client/v1/mls/key_packages/claim";
            let mut got = 0;
            for i in 0..per_task {
                let user = &users[(task * per_task + i) % users.len()];
                let body = json!({ "user_id": user });
                let v = call(&http, &base, Some(&token), reqwest::Method::POST, path, Some(&body)).await;
                got += v["key_packages"].as_object().map_or(0, |m| m.len());
            }
            got
        }));
    }
    let mut got = 0;
    for t in tasks {
        got += t.await.unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "key package claims: {} in {:.2} s, {:.0}/s ({} concurrent claimers)",
        got,
        elapsed.as_secs_f64(),
        got as f64 / elapsed.as_secs_f64(),
        args.concurrency
    );
    let _ = std::fs::remove_dir_all(&dir);
}
