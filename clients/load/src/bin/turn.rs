//! TURN relay load: throughput and added latency of a homeserver's TURN relay on loopback.
//!
//! Registers a user on the homeserver, takes TURN credentials from `/voip/turnServer`,
//! allocates a relayed address (the webrtc-rs TURN client), and measures against a UDP peer on
//! loopback (the relay must allow it): the round trip of small packets through the relay and
//! directly (the difference is what the relay adds), then the rate at which the peer receives
//! a stream of packets sent through the relay.
//!   diplomatie-turn-load --url http://127.0.0.1:8008

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Parser;
use serde_json::{json, Value};
use tokio::net::UdpSocket;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

#[derive(Parser)]
struct Args {
    /// The homeserver (its TURN relay on, allowing loopback peers).
    #[arg(long)]
    url: String,
    /// Round trips measured each way.
    #[arg(long, default_value_t = 2000)]
    round_trips: usize,
    /// Packets of the stream.
    #[arg(long, default_value_t = 50_000)]
    packets: usize,
    /// Bytes per packet of the stream (a video packet is about 1,200).
    #[arg(long, default_value_t = 1200)]
    size: usize,
    /// Target rate of the stream, in packets per second (0: as fast as the client sends).
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
}

async fn credentials(url: &str) -> anyhow::Result<(String, String, String)> {
    let http = reqwest::Client::new();
    let name = format!("turnload{}", rand::random::<u32>());
    let register = format!("{url}/_matrix/client/v3/register");
    let body = json!({ "username": name, "password": "turn load password", "auth": { "type": "m.login.dummy" } });
    let first: Value = http.post(&register).json(&body).send().await?.json().await?;
    let token = match first["access_token"].as_str() {
        Some(t) => t.to_owned(),
        None => {
            let mut body = body.clone();
            body["auth"]["session"] = first["session"].clone();
            let v: Value = http.post(&register).json(&body).send().await?.json().await?;
            v["access_token"].as_str().context("registration")?.to_owned()
        }
    };
    let v: Value =
        http.get(format!("{url}/_matrix/client/v3/voip/turnServer")).bearer_auth(&token).send().await?.json().await?;
    let uri = v["uris"][0].as_str().context("no TURN server configured")?;
    let addr = uri.trim_start_matches("turn:").split('?').next().unwrap_or_default().to_owned();
    Ok((
        addr,
        v["username"].as_str().unwrap_or_default().to_owned(),
        v["password"].as_str().unwrap_or_default().to_owned(),
    ))
}

fn summary(label: &str, mut rtts: Vec<Duration>) -> Duration {
    rtts.sort();
    let at = |q: f64| rtts[((rtts.len() as f64 * q) as usize).min(rtts.len() - 1)];
    println!("{label}: p50 {:?} p99 {:?} (n={})", at(0.5), at(0.99), rtts.len());
    at(0.5)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (server, username, password) = credentials(&args.url).await?;
    let client = Client::new(ClientConfig {
        stun_serv_addr: String::new(),
        turn_serv_addr: server.clone(),
        username,
        password,
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(UdpSocket::bind("127.0.0.1:0").await?),
        vnet: None,
    })
    .await?;
    client.listen().await?;
    let relay = client.allocate().await?;
    println!("relay {server}, relayed address {}", relay.local_addr()?);

    // An echoing peer.
    let echo = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let echo_addr = echo.local_addr()?;
    let echoing = echo.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = echoing.recv_from(&mut buf).await {
            let _ = echoing.send_to(&buf[..n], from).await;
        }
    });
    let mut buf = vec![0u8; 2048];
    // Through the relay (the first exchange creates the permission and the channel).
    relay.send_to(b"warm", echo_addr).await?;
    tokio::time::timeout(Duration::from_secs(5), relay.recv_from(&mut buf))
        .await
        .context("no echo through the relay")??;
    let mut through = Vec::with_capacity(args.round_trips);
    for i in 0..args.round_trips {
        let packet = (i as u64).to_be_bytes();
        let t = Instant::now();
        relay.send_to(&packet, echo_addr).await?;
        loop {
            let (n, _) = tokio::time::timeout(Duration::from_secs(2), relay.recv_from(&mut buf)).await??;
            if buf[..n] == packet {
                break;
            }
        }
        through.push(t.elapsed());
    }
    let direct_socket = UdpSocket::bind("127.0.0.1:0").await?;
    let mut direct = Vec::with_capacity(args.round_trips);
    for i in 0..args.round_trips {
        let packet = (i as u64).to_be_bytes();
        let t = Instant::now();
        direct_socket.send_to(&packet, echo_addr).await?;
        loop {
            let (n, _) = direct_socket.recv_from(&mut buf).await?;
            if buf[..n] == packet {
                break;
            }
        }
        direct.push(t.elapsed());
    }
    let relayed = summary("round trip through the relay", through);
    let plain = summary("round trip direct", direct);
    println!("added by the relay (p50): {:?}", relayed.saturating_sub(plain));

    // The stream: a sink counts what arrives.
    let sink = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let sink_addr = sink.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let (r, b, counting) = (received.clone(), bytes.clone(), sink.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, _)) = counting.recv_from(&mut buf).await {
            r.fetch_add(1, Ordering::Relaxed);
            b.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    relay.send_to(b"warm", sink_addr).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (r0, b0) = (received.load(Ordering::Relaxed), bytes.load(Ordering::Relaxed));
    let payload = vec![7u8; args.size];
    let started = Instant::now();
    for i in 0..args.packets {
        relay.send_to(&payload, sink_addr).await?;
        if args.rate > 0 {
            let due = Duration::from_secs_f64(i as f64 / args.rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                if wait > Duration::from_millis(1) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
    let sent_in = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = received.load(Ordering::Relaxed) - r0;
    let got_bytes = bytes.load(Ordering::Relaxed) - b0;
    let secs = sent_in.as_secs_f64();
    println!(
        "stream through the relay: {} of {} packets of {} B in {:.2} s: {:.0} packets/s, {:.1} Mbit/s received, {:.2} % lost",
        got,
        args.packets,
        args.size,
        secs,
        got as f64 / secs,
        got_bytes as f64 * 8.0 / secs / 1e6,
        100.0 * (args.packets as u64 - got.min(args.packets as u64)) as f64 / args.packets as f64
    );
    client.close().await?;
    Ok(())
}
