//! Prometheus's endpoint, black box: `/metrics` on its own listener (never on the API's), the
//! series an operator reads (requests by route and status with latency, events persisted,
//! `/sync` long-polls waiting, the database pool, the process), its text checked by
//! `promtool check metrics`, and scraped by a real Prometheus (Debian's package), queried
//! through its HTTP API.

use std::{process::Stdio, time::Duration};

use diplomatie_tests::{backend_tests, free_port, Backend, TestServer};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

backend_tests!(prometheus_scrapes_the_metrics);

/// A program Debian's `prometheus` package installs (`.ci/run` installs it).
fn program(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let path = format!("{dir}/{name}");
        if std::path::Path::new(&path).exists() {
            return path;
        }
    }
    panic!("{name} is missing: install Debian's prometheus package (.ci/run does)");
}

/// The value of the first sample whose line starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

async fn prometheus_scrapes_the_metrics(backend: Backend) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = TestServer::start(backend, &[("METRICS__LISTEN", listen.as_str())]).await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({ "name": "Measured" })).await;
    alice.send_text(&room, "one").await;
    let (status, _) = alice.get("/_matrix/client/v3/rooms/!nowhere:localhost/state").await;
    assert_eq!(status, 404);
    // A long-poll that waits while the metrics are read.
    let first = alice.sync(None, "").await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let waiting = alice.clone();
    let poll = tokio::spawn(async move {
        waiting.get(&format!("/_matrix/client/v3/sync?since={since}&timeout=4000")).await;
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let http = reqwest::Client::new();
    let scrape = http.get(format!("http://{listen}/metrics")).send().await.unwrap();
    assert_eq!(scrape.status(), 200);
    assert!(scrape.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = scrape.text().await.unwrap();
    let created = r#"diplomatie_http_requests_total{method="POST",route="/_matrix/client/v3/createRoom",status="200"}"#;
    assert_eq!(sample(&text, created), Some(1.0), "{text}");
    let state =
        r#"diplomatie_http_requests_total{method="GET",route="/_matrix/client/v3/rooms/{room_id}/state",status="404"}"#;
    assert_eq!(sample(&text, state), Some(1.0), "the path's template, not the path: {text}");
    assert!(!text.contains("!nowhere"), "no room id in a label");
    let latency =
        r#"diplomatie_http_request_duration_seconds_count{method="POST",route="/_matrix/client/v3/createRoom"}"#;
    assert_eq!(sample(&text, latency), Some(1.0));
    assert!(sample(&text, "diplomatie_events_persisted_total").unwrap() >= 7.0, "creation events and a message");
    assert_eq!(sample(&text, "diplomatie_sync_waiting"), Some(1.0), "one long-poll waits");
    assert!(sample(&text, r#"diplomatie_database_connections{state="idle"}"#).is_some());
    assert!(sample(&text, "diplomatie_search_index_pending_batches").is_some());
    assert!(sample(&text, "diplomatie_process_resident_memory_bytes").unwrap() > 1e6, "{text}");
    poll.await.unwrap();
    let after = http.get(format!("http://{listen}/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(sample(&after, "diplomatie_sync_waiting"), Some(0.0), "the long-poll ended");

    // The API's listener does not serve them.
    let (status, body) = alice.request(Method::GET, "/metrics", None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["errcode"], "M_UNRECOGNIZED");

    // promtool reads the exposition without a complaint.
    let mut check = tokio::process::Command::new(program("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(after.as_bytes()).await.unwrap();
    let out = check.wait_with_output().await.unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool: {said}");

    // A real Prometheus scrapes it every second; its query API answers with our series.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: diplomatie\n    static_configs:\n      - targets: ['{listen}']\n"
        ),
    )
    .unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let mut prometheus = tokio::process::Command::new(program("prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let query = |q: &str| format!("http://{web}/api/v1/query?query={}", diplomatie_tests::urlencode(q));
    let mut found = Value::Null;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(resp) =
            http.get(query(r#"diplomatie_http_requests_total{route="/_matrix/client/v3/createRoom"}"#)).send().await
        else {
            continue;
        };
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if v["data"]["result"].as_array().is_some_and(|r| !r.is_empty()) {
            found = v;
            break;
        }
    }
    assert_eq!(found["status"], "success", "Prometheus never had the series: {found}");
    assert_eq!(found["data"]["result"][0]["value"][1], "1", "{found}");
    let up: Value = http.get(query(r#"up{job="diplomatie"}"#)).send().await.unwrap().json().await.unwrap();
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");
    prometheus.kill().await.unwrap();
}
