//! Search benchmark (issue: "index 1,000,000 messages, then report query latency p50/p99 and
//! index size"). Indexes synthetic messages of a Zipf-like vocabulary spread over 100 rooms,
//! then runs queries as a user in 20 of those rooms would, through the same index code the
//! server uses. Prints numbers; asserts nothing.
//!
//!     cargo bench -p diplomatie-service --bench search            (1,000,000 messages)
//!     MESSAGES=100000 cargo bench -p diplomatie-service --bench search

use std::time::Instant;

use diplomatie_service::search::index::{Covered, IndexedEvent, Key, SearchIndex};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn vocabulary(rng: &mut StdRng, n: usize) -> Vec<String> {
    const SYLLABLES: &[&str] = &[
        "ta", "ri", "ve", "lo", "men", "sa", "dé", "cri", "pol", "ba", "nu", "ré", "tion", "gou", "mi", "zon", "fé",
        "ar", "chi", "vé", "con", "sul", "am", "bas", "dor", "la", "ter", "né", "gal", "ris",
    ];
    (0..n).map(|_| (0..rng.gen_range(2..4)).map(|_| SYLLABLES[rng.gen_range(0..SYLLABLES.len())]).collect()).collect()
}

/// A word index skewed towards the first ones (a rough Zipf law).
fn zipf(rng: &mut StdRng, n: usize) -> usize {
    let x: f64 = rng.gen::<f64>();
    ((n as f64).powf(x) as usize).saturating_sub(1).min(n - 1)
}

fn main() {
    let messages: usize = std::env::var("MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let queries: usize = std::env::var("QUERIES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000);
    let mut rng = StdRng::seed_from_u64(42);
    let words = vocabulary(&mut rng, 20_000);
    let rooms: Vec<String> = (0..100).map(|i| format!("!room{i}:bench")).collect();
    let dir = tempfile::tempdir().unwrap();
    let index = SearchIndex::open(dir.path(), 64_000_000).unwrap();

    let started = Instant::now();
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..messages {
        let len = rng.gen_range(6..25);
        let body: Vec<&str> = (0..len).map(|_| words[zipf(&mut rng, words.len())].as_str()).collect();
        batch.push(IndexedEvent {
            event_id: format!("$event{i}"),
            room_id: rooms[rng.gen_range(0..rooms.len())].clone(),
            sender: format!("@agent{}:bench", rng.gen_range(0..2000)),
            kind: "m.room.message".into(),
            stream: i as i64 + 1,
            body: Some(body.join(" ")),
            name: None,
            topic: None,
        });
        if batch.len() == 10_000 {
            index.add(&batch, Covered::default()).unwrap();
            batch.clear();
        }
        if (i + 1) % 100_000 == 0 {
            index.commit(Covered::up_to(i as i64 + 1)).unwrap();
        }
    }
    index.add(&batch, Covered::default()).unwrap();
    index.commit(Covered::up_to(messages as i64)).unwrap();
    let indexing = started.elapsed();

    let mut latencies = Vec::with_capacity(queries);
    let mut hits = 0usize;
    for q in 0..queries {
        let mut mine: Vec<String> = (0..20).map(|_| rooms[rng.gen_range(0..rooms.len())].clone()).collect();
        mine.dedup();
        let term = if q % 2 == 0 {
            words[zipf(&mut rng, 2_000)].clone()
        } else {
            format!("{} {}", words[zipf(&mut rng, 200)], words[zipf(&mut rng, 5_000)])
        };
        let recent = q % 4 == 3;
        let t = Instant::now();
        let found = index.search(&term, &[Key::Body, Key::Name, Key::Topic], &mine, recent, 0, 10).unwrap();
        latencies.push(t.elapsed());
        hits += found.hits.len();
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!("search benchmark: {messages} messages in 100 rooms, {queries} queries (user in 20 rooms, limit 10)");
    println!(
        "  indexing: {:.1} s ({:.0} messages/s)",
        indexing.as_secs_f64(),
        messages as f64 / indexing.as_secs_f64()
    );
    println!("  index size: {:.1} MiB", index.size_on_disk() as f64 / (1024.0 * 1024.0));
    println!(
        "  query latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({:.1} hits a query)",
        pct(0.50).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0,
        latencies.last().unwrap().as_secs_f64() * 1000.0,
        hits as f64 / queries as f64
    );
}
