//! `diplomatie-sliding-load`: simplified sliding sync (MSC4186) under the workload of its
//! benchmark, through the client-server API only, so that Diplomatie and Synapse are measured
//! the same way:
//!
//! 1. one user in `--rooms` rooms of about `--events` events each;
//! 2. the first window: a cold connection (no `pos`) asks for the 20 most recent rooms as
//!    Element X's room list does (`timeline_limit` 1, its required state), `--windows` times;
//! 3. delivery: `--clients` users, each with a sliding sync connection long-polling, in one room;
//!    messages sent one at a time, and the time from each send to each client seeing it;
//! 4. memory: the resident set of the server process (`--pid`) with those connections open.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Parser;
use diplomatie_load::{memory_kib, percentile, register_many, Api};
use futures::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::Mutex;

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

#[derive(Parser, Clone)]
#[command(about = "Simplified sliding sync: first window, delivery latency and memory of a Matrix homeserver")]
struct Args {
    /// Base URL of the homeserver (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8008")]
    url: String,
    /// Rooms the reading user is in.
    #[arg(long, default_value_t = 1000)]
    rooms: usize,
    /// Events in each room (its creation's included).
    #[arg(long, default_value_t = 20)]
    events: usize,
    /// Cold connections timed for the first window.
    #[arg(long, default_value_t = 20)]
    windows: usize,
    /// Long-polling sliding sync clients in the delivery phase.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Messages sent (one at a time) in the delivery phase.
    #[arg(long, default_value_t = 50)]
    probes: usize,
    /// Process id of the server, to report its memory.
    #[arg(long)]
    pid: Option<u32>,
    /// A label printed with the results.
    #[arg(long, default_value = "server")]
    label: String,
}

/// Element X's room list request: the `range_end + 1` most recent rooms, the last event of each.
fn room_list(conn_id: &str, range_end: usize) -> Value {
    json!({
        "conn_id": conn_id,
        "lists": { "all": {
            "ranges": [[0, range_end]],
            "timeline_limit": 1,
            "required_state": [
                ["m.room.encryption", ""], ["m.room.member", "$LAZY"], ["m.room.member", "$ME"],
                ["m.room.name", ""], ["m.room.avatar", ""], ["m.room.canonical_alias", ""],
                ["m.room.topic", ""], ["m.room.join_rules", ""], ["m.room.create", ""],
                ["m.room.power_levels", ""], ["m.room.history_visibility", ""],
            ],
        } },
    })
}

async fn sliding(api: &Api, token: &str, pos: Option<&str>, timeout_ms: u64, body: &Value) -> Result<Value> {
    let mut path = format!("{PATH}?timeout={timeout_ms}");
    if let Some(p) = pos {
        path.push_str(&format!("&pos={p}"));
    }
    api.ok(Method::POST, &path, Some(token), Some(body)).await
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let api = Arc::new(Api::new(&args.url)?);
    let run = format!("{:x}", rand::random::<u32>());

    // Set-up: the reader's rooms, their events (about 6 from the creation, messages for the rest).
    let reader = api.register(&format!("slide{run}r")).await?;
    let messages = args.events.saturating_sub(6);
    eprintln!("creating {} rooms of {} events…", args.rooms, messages + 6);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers = (0..8).map(|_| {
        let (api, reader, next) = (api.clone(), reader.clone(), next.clone());
        let (rooms, messages) = (args.rooms, messages);
        async move {
            loop {
                let r = next.fetch_add(1, Ordering::Relaxed);
                if r >= rooms {
                    return Ok::<_, anyhow::Error>(());
                }
                let body = json!({ "preset": "private_chat", "name": format!("salle {r}") });
                let v = api.ok(Method::POST, "/_matrix/client/v3/createRoom", Some(&reader.token), Some(&body)).await?;
                let room = v["room_id"].as_str().context("room_id")?.to_owned();
                for m in 0..messages {
                    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/r{r}m{m}");
                    let body = json!({ "msgtype": "m.text", "body": format!("message {m} de la salle {r}") });
                    api.ok(Method::PUT, &path, Some(&reader.token), Some(&body)).await?;
                }
            }
        }
    });
    for w in join_all(workers).await {
        w?;
    }

    // Phase 1: the first window of a cold connection.
    eprintln!("first window: {} cold connections…", args.windows);
    let mut windows = Vec::with_capacity(args.windows);
    for w in 0..args.windows {
        let started = Instant::now();
        let v = sliding(&api, &reader.token, None, 0, &room_list(&format!("cold-{w}"), 19)).await?;
        windows.push(started.elapsed().as_secs_f64() * 1000.0);
        let shown = v["rooms"].as_object().map_or(0, |r| r.len());
        if shown != 20.min(args.rooms) {
            anyhow::bail!("the first window held {shown} rooms: {}", v["lists"]);
        }
    }
    windows.sort_by(|a, b| a.partial_cmp(b).unwrap());

    // Phase 2: delivery to long-polling sliding sync clients in one room.
    eprintln!("delivery: {} long-polling connections, {} probes…", args.clients, args.probes);
    let body = json!({ "preset": "public_chat", "name": "sonde" });
    let probe_room = api.ok(Method::POST, "/_matrix/client/v3/createRoom", Some(&reader.token), Some(&body)).await?
        ["room_id"]
        .as_str()
        .context("room_id")?
        .to_owned();
    let clients = register_many(&api, &format!("slide{run}c"), args.clients).await?;
    for chunk in clients.chunks(20) {
        let joins = join_all(chunk.iter().map(|u| {
            let api = api.clone();
            let path = format!("/_matrix/client/v3/join/{probe_room}");
            async move { api.ok(Method::POST, &path, Some(&u.token), Some(&json!({}))).await }
        }))
        .await;
        for j in joins {
            j?;
        }
    }
    let list = room_list("room-list", 19);
    let mut positions = HashMap::new();
    for chunk in clients.chunks(20) {
        let first = join_all(chunk.iter().map(|u| {
            let (api, list) = (api.clone(), list.clone());
            async move {
                let v = sliding(&api, &u.token, None, 0, &list).await?;
                // Once more, so that the long polls below wait for the probes, not for what
                // the other clients' joins changed.
                let pos = v["pos"].as_str().context("pos")?.to_owned();
                sliding(&api, &u.token, Some(&pos), 0, &list).await
            }
        }))
        .await;
        for (u, v) in chunk.iter().zip(first) {
            positions.insert(u.id.clone(), v?["pos"].as_str().context("pos")?.to_owned());
        }
    }
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for u in &clients {
        let (api, list, token) = (api.clone(), list.clone(), u.token.clone());
        let mut pos = positions[&u.id].clone();
        let (sent_at, latencies, done) = (sent_at.clone(), latencies.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = HashSet::new();
            while !done.load(Ordering::Acquire) {
                let Ok(v) = sliding(&api, &token, Some(&pos), 10_000, &list).await else { continue };
                let now = Instant::now();
                for room in v["rooms"].as_object().into_iter().flat_map(|r| r.values()) {
                    for e in room["timeline"].as_array().into_iter().flatten() {
                        let Some(probe) = e["content"]["probe"].as_str() else { continue };
                        if seen.insert(probe.to_owned()) {
                            if let Some(t0) = sent_at.lock().await.get(probe) {
                                latencies.lock().await.push(now.duration_since(*t0).as_secs_f64() * 1000.0);
                            }
                        }
                    }
                }
                if let Some(p) = v["pos"].as_str() {
                    pos = p.to_owned();
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for p in 0..args.probes {
        let probe = format!("{run}-{p}");
        sent_at.lock().await.insert(probe.clone(), Instant::now());
        let path = format!("/_matrix/client/v3/rooms/{probe_room}/send/m.room.message/probe{p}");
        let body = json!({ "msgtype": "m.text", "body": "sonde", "probe": probe });
        api.ok(Method::PUT, &path, Some(&reader.token), Some(&body)).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let expected = args.probes * args.clients;
    let deadline = Instant::now() + Duration::from_secs(30);
    while latencies.lock().await.len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let memory = args.pid.and_then(memory_kib);
    done.store(true, Ordering::Release);
    for t in tasks {
        t.abort();
    }
    let mut lat = latencies.lock().await.clone();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());

    println!("== {} ({})", args.label, args.url);
    println!(
        "first window: p50 {:.1} ms, max {:.1} ms ({} cold connections, 20 rooms of {} with {} events each)",
        percentile(&windows, 50.0),
        windows.last().copied().unwrap_or(f64::NAN),
        args.windows,
        args.rooms,
        messages + 6
    );
    println!(
        "delivery latency: p50 {:.1} ms, p99 {:.1} ms ({} deliveries of {expected} expected, {} long-polling connections)",
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        lat.len(),
        args.clients
    );
    match (args.pid, memory) {
        (Some(_), Some((rss, peak))) => {
            println!("server memory: {:.1} MiB resident, {:.1} MiB peak", rss as f64 / 1024.0, peak as f64 / 1024.0)
        }
        (Some(pid), None) => println!("server memory: process {pid} not found"),
        _ => {}
    }
    Ok(())
}
