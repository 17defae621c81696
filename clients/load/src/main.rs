//! `diplomatie-load`: measures a homeserver under the workload of the benchmark issue, through
//! the client-server API only, so that Diplomatie and Synapse are measured the same way.
//!
//! 1. registers users (open registration with `m.login.dummy`) and puts them in rooms;
//! 2. send throughput: every sender posts messages to its room as fast as the server accepts;
//! 3. delivery latency: long-polling `/sync` clients each wait for messages sent to their room,
//!    and the time from the start of the send request to each client seeing the event is recorded;
//! 4. memory: the resident set of the server process (`--pid`), current and peak.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Parser;
use diplomatie_load::{cpu_ms, memory_kib, percentile, register_many, Api, User};
use futures::future::join_all;
use serde_json::json;
use tokio::sync::Mutex;

#[derive(Parser, Clone)]
#[command(about = "Send throughput, send-to-sync latency and memory of a Matrix homeserver")]
struct Args {
    /// Base URL of the homeserver (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8008")]
    url: String,
    /// Users sending in the throughput phase.
    #[arg(long, default_value_t = 100)]
    senders: usize,
    /// Rooms the users are spread over.
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Messages each sender posts in the throughput phase.
    #[arg(long, default_value_t = 20)]
    messages: usize,
    /// Long-polling clients in the latency phase.
    #[arg(long, default_value_t = 200)]
    syncers: usize,
    /// Messages sent (one at a time) in the latency phase.
    #[arg(long, default_value_t = 100)]
    probes: usize,
    /// Process id of the server, to report its memory.
    #[arg(long)]
    pid: Option<u32>,
    /// A label printed with the results.
    #[arg(long, default_value = "server")]
    label: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let api = Arc::new(Api::new(&args.url)?);
    let run = format!("{:x}", rand::random::<u32>());

    // Set-up: users and rooms.
    // User 0 owns every room, so it stays out of the latency measurement.
    let total_users = args.senders.max(args.syncers + 1);
    eprintln!("registering {total_users} users…");
    let users = register_many(&api, &format!("load{run}u"), total_users).await?;
    eprintln!("creating {} rooms…", args.rooms);
    let owner = users[0].clone();
    let mut rooms = Vec::new();
    for r in 0..args.rooms {
        let v = api
            .ok(
                reqwest::Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(&owner.token),
                Some(&json!({ "preset": "public_chat", "name": format!("load {r}") })),
            )
            .await?;
        rooms.push(v["room_id"].as_str().context("room_id")?.to_owned());
    }
    for chunk in users.iter().enumerate().skip(1).collect::<Vec<_>>().chunks(20) {
        let joins = join_all(chunk.iter().map(|(i, u)| {
            let api = api.clone();
            let room = rooms[i % args.rooms].clone();
            let token = u.token.clone();
            async move {
                api.ok(
                    reqwest::Method::POST,
                    &format!("/_matrix/client/v3/join/{room}"),
                    Some(&token),
                    Some(&json!({})),
                )
                .await
            }
        }))
        .await;
        for j in joins {
            j?;
        }
    }

    // Phase 1: send throughput.
    eprintln!("throughput: {} senders × {} messages…", args.senders, args.messages);
    let started = Instant::now();
    let results = join_all(users.iter().take(args.senders).enumerate().map(|(i, u)| {
        let api = api.clone();
        let room = rooms[i % args.rooms].clone();
        let token = u.token.clone();
        let n = args.messages;
        async move {
            for m in 0..n {
                let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/tp{m}");
                api.ok(
                    reqwest::Method::PUT,
                    &path,
                    Some(&token),
                    Some(&json!({ "msgtype": "m.text", "body": format!("message {m}") })),
                )
                .await?;
            }
            Ok::<_, anyhow::Error>(n)
        }
    }))
    .await;
    let sent: usize = results.into_iter().collect::<Result<Vec<_>>>()?.into_iter().sum();
    let elapsed = started.elapsed().as_secs_f64();
    let throughput = sent as f64 / elapsed;

    // Phase 2: delivery latency with long-polling clients.
    eprintln!("latency: {} long-polling clients, {} probes…", args.syncers, args.probes);
    let syncers: Vec<(User, String)> = users
        .iter()
        .enumerate()
        .skip(1)
        .take(args.syncers)
        .map(|(i, u)| (u.clone(), rooms[i % args.rooms].clone()))
        .collect();
    let mut since = HashMap::new();
    for chunk in syncers.chunks(20) {
        let tokens = join_all(chunk.iter().map(|(u, _)| {
            let api = api.clone();
            let token = u.token.clone();
            async move {
                let filter = "%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A1%7D%7D%7D";
                api.ok(reqwest::Method::GET, &format!("/_matrix/client/v3/sync?filter={filter}"), Some(&token), None)
                    .await
            }
        }))
        .await;
        for ((u, _), t) in chunk.iter().zip(tokens) {
            since.insert(u.id.clone(), t?["next_batch"].as_str().context("next_batch")?.to_owned());
        }
    }
    // The first syncers' tokens predate the others' first sync (and so their coming online):
    // one more sync each, once all are online, so that the long polls below wait for the probes
    // rather than answer that burst of presence.
    for chunk in syncers.chunks(20) {
        let tokens = join_all(chunk.iter().map(|(u, _)| {
            let api = api.clone();
            let token = u.token.clone();
            let path = format!("/_matrix/client/v3/sync?since={}&timeout=0", since[&u.id]);
            async move { api.ok(reqwest::Method::GET, &path, Some(&token), None).await }
        }))
        .await;
        for ((u, _), t) in chunk.iter().zip(tokens) {
            since.insert(u.id.clone(), t?["next_batch"].as_str().context("next_batch")?.to_owned());
        }
    }
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let duplicates = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (u, _room) in &syncers {
        let api = api.clone();
        let token = u.token.clone();
        let mut next = since[&u.id].clone();
        let sent_at = sent_at.clone();
        let latencies = latencies.clone();
        let done = done.clone();
        let duplicates = duplicates.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = std::collections::HashSet::new();
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                let path = format!("/_matrix/client/v3/sync?since={next}&timeout=5000");
                let Ok(v) = api.ok(reqwest::Method::GET, &path, Some(&token), None).await else { continue };
                let now = Instant::now();
                if let Some(rooms) = v["rooms"]["join"].as_object() {
                    for room in rooms.values() {
                        for e in room["timeline"]["events"].as_array().into_iter().flatten() {
                            if let Some(probe) = e["content"]["probe"].as_str() {
                                if !seen.insert(probe.to_owned()) {
                                    duplicates.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    continue;
                                }
                                if let Some(t0) = sent_at.lock().await.get(probe) {
                                    latencies.lock().await.push(now.duration_since(*t0).as_secs_f64() * 1000.0);
                                }
                            }
                        }
                    }
                }
                if let Some(n) = v["next_batch"].as_str() {
                    next = n.to_owned();
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    eprintln!("probes: {} messages, {} ms apart…", args.probes, 20);
    // The server's CPU over the delivery phase: mostly the woken syncs it answers.
    let cpu_before = args.pid.and_then(cpu_ms);
    for p in 0..args.probes {
        let sender = &users[p % args.rooms];
        let room = &rooms[p % args.rooms];
        let probe = format!("{run}-{p}");
        sent_at.lock().await.insert(probe.clone(), Instant::now());
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/probe{p}");
        api.ok(
            reqwest::Method::PUT,
            &path,
            Some(&sender.token),
            Some(&json!({ "msgtype": "m.text", "body": "probe", "probe": probe })),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Expected deliveries: each probe reaches every syncer of its room.
    let expected: usize =
        (0..args.probes).map(|p| syncers.iter().filter(|(_, r)| *r == rooms[p % args.rooms]).count()).sum();
    let deadline = Instant::now() + Duration::from_secs(30);
    while latencies.lock().await.len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu_used = args.pid.and_then(cpu_ms).zip(cpu_before).map(|(after, before)| after - before);
    done.store(true, std::sync::atomic::Ordering::Release);
    let mut lat = latencies.lock().await.clone();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    for t in tasks {
        t.abort();
    }

    println!("== {} ({})", args.label, args.url);
    println!(
        "send throughput: {throughput:.0} events/s ({sent} events from {} senders in {} rooms, {elapsed:.2} s)",
        args.senders, args.rooms
    );
    println!(
        "delivery latency: p50 {:.1} ms, p99 {:.1} ms ({} deliveries of {expected} expected, {} duplicates, {} long-polling clients)",
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        lat.len(),
        duplicates.load(std::sync::atomic::Ordering::Relaxed),
        args.syncers
    );
    if let Some(cpu) = cpu_used {
        let woken = lat.len().max(1);
        println!(
            "server CPU while delivering: {cpu:.0} ms for {} deliveries, {:.3} ms per woken sync (the probes' sends included)",
            lat.len(),
            cpu / woken as f64
        );
    }
    if let Some(pid) = args.pid {
        match memory_kib(pid) {
            Some((rss, peak)) => {
                println!("server memory: {:.1} MiB resident, {:.1} MiB peak", rss as f64 / 1024.0, peak as f64 / 1024.0)
            }
            None => println!("server memory: process {pid} not found"),
        }
    }
    Ok(())
}
