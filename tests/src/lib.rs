//! The harness of the black-box tests: starts the real `diplomatie` binary on a free loopback
//! port with a fresh database (SQLite in a temporary directory, or a new PostgreSQL database),
//! and speaks HTTP to it as a client would. Servers stop when the test drops them.
//!
//! Every scenario runs on both backends through [`backend_tests!`].

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use tokio::process::{Child, Command};

/// Where PostgreSQL listens in CI and on every developer machine (trust auth).
pub const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The path of the `diplomatie` binary built beside the test executable.
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("DIPLOMATIE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/diplomatie
    let dir = exe.parent().and_then(|d| d.parent()).expect("target directory");
    let bin = dir.join("diplomatie");
    assert!(bin.exists(), "{} is missing: build it first (cargo build -p diplomatie)", bin.display());
    bin
}

pub mod dns;

/// A log line without its ANSI colour sequences.
fn without_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters, up to a final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running server with its own data.
pub struct TestServer {
    pub base: String,
    pub server_name: String,
    pub backend: Backend,
    pub data_dir: tempfile::TempDir,
    pub database_url: String,
    pg_database: Option<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl TestServer {
    /// Starts a server with open registration, rate limits off, and `extra` settings as
    /// `DIPLOMATIE_*` variables (for example `("REGISTRATION__REQUIRE_TOKEN", "true")`).
    pub async fn start(backend: Backend, extra: &[(&str, &str)]) -> TestServer {
        let data_dir = tempfile::tempdir().expect("temporary directory");
        let (database_url, pg_database) = match backend {
            Backend::Sqlite => (String::new(), None),
            Backend::Postgres => {
                let name = format!("dip_test_{}", rand_suffix());
                let mut admin = connect_pg().await;
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await
                    .expect("create test database");
                (format!("postgres://postgres@127.0.0.1:5432/{name}"), Some(name))
            }
        };
        let mut env = vec![
            ("REGISTRATION__ENABLED".to_owned(), "true".to_owned()),
            ("RATE_LIMITS__ENABLED".to_owned(), "false".to_owned()),
            ("SERVER_NAME".to_owned(), "localhost".to_owned()),
            ("DATA_DIR".to_owned(), data_dir.path().display().to_string()),
            ("DATABASE_URL".to_owned(), database_url.clone()),
        ];
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        let server_name = env.iter().find(|(k, _)| k == "SERVER_NAME").map(|(_, v)| v.clone()).unwrap_or_default();
        let mut server = TestServer {
            base: String::new(),
            server_name,
            backend,
            data_dir,
            database_url,
            pg_database,
            env,
            child: None,
        };
        server.launch().await;
        server
    }

    /// Starts a server whose organisation (users, groups, communities: the YAML of
    /// `diplomatie org import`) is imported through the command line before it starts.
    pub async fn start_with_organisation(backend: Backend, yaml: &str, extra: &[(&str, &str)]) -> TestServer {
        let mut server = TestServer::start(backend, extra).await;
        server.kill().await;
        let file = server.data_dir.path().join("organisation.yaml");
        std::fs::write(&file, yaml).unwrap();
        let out = server.command(&["org", "import", file.to_str().unwrap()]).await;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        server.launch().await;
        server
    }

    /// Starts a server that federates: its name is `127.0.0.1:<port>` where its built-in HTTPS
    /// listener serves (a self-signed certificate, accepted by the others since every test
    /// server skips certificate checks for loopback addresses only).
    pub async fn start_federating(backend: Backend, extra: &[(&str, &str)]) -> TestServer {
        TestServer::start_federating_as(backend, "127.0.0.1", extra).await
    }

    /// [`TestServer::start_federating`] with the host part of the name given (`localhost`).
    pub async fn start_federating_as(backend: Backend, host: &str, extra: &[(&str, &str)]) -> TestServer {
        let port = free_port();
        TestServer::start_federating_named(backend, &format!("{host}:{port}"), port, extra).await
    }

    /// A federating server named `name` (with or without a port), serving HTTPS on
    /// `127.0.0.1:tls_port`: other servers find it there through its name or through DNS.
    pub async fn start_federating_named(backend: Backend, name: &str, port: u16, extra: &[(&str, &str)]) -> TestServer {
        let mut settings: Vec<(&str, &str)> = vec![
            ("SERVER_NAME", name),
            ("FEDERATION__ENABLED", "true"),
            ("FEDERATION__INSECURE_LOOPBACK_TLS", "true"),
            // Every test server is on loopback, which federation never reaches by default.
            ("FEDERATION__IP_RANGE_ALLOWLIST", r#"["127.0.0.0/8", "::1/128"]"#),
            ("FEDERATION__MAX_BACKOFF_MS", "2000"),
        ];
        let listen = format!("127.0.0.1:{port}");
        settings.push(("FEDERATION__TLS_LISTEN", &listen));
        settings.extend_from_slice(extra);
        TestServer::start(backend, &settings).await
    }

    /// Starts (or restarts) the process on a port the system chooses, over the same data. The
    /// server says which in its log (the `diplomatie::listening` line), which is read here and
    /// passed on to the test's output with the rest: a port chosen beforehand could be taken
    /// by another test's server in between, and this test would then talk to that one.
    pub async fn launch(&mut self) {
        use tokio::io::AsyncBufReadExt;
        let mut cmd = Command::new(binary());
        for (k, v) in &self.env {
            cmd.env(format!("DIPLOMATIE_{k}"), v);
        }
        // Warnings and errors always reach the test's output (shown when it fails);
        // `DIPLOMATIE_TEST_LOG=info,diplomatie_service=debug` shows what the servers do.
        let log = std::env::var("DIPLOMATIE_TEST_LOG").unwrap_or_else(|_| "warn".into());
        cmd.env("DIPLOMATIE_LISTEN", "127.0.0.1:0")
            .env("DIPLOMATIE_LOG", format!("{log},diplomatie::listening=info"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("start diplomatie");
        let stdout = child.stdout.take().expect("piped stdout");
        self.child = Some(child);
        let (found, mut listening) = tokio::sync::mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                println!("{line}");
                let line = without_colours(&line);
                if line.contains("Diplomatie is listening") {
                    if let Some(addr) = line.split_whitespace().find_map(|w| w.strip_prefix("addr=")) {
                        let _ = found.send(addr.to_owned());
                    }
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            if let Ok(Some(addr)) = tokio::time::timeout(Duration::from_millis(50), listening.recv()).await {
                break addr;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("server exited at start-up: {status}");
            }
            assert!(Instant::now() < deadline, "server did not start");
        };
        self.base = format!("http://{addr}");
        let http = reqwest::Client::new();
        loop {
            if let Ok(r) = http.get(format!("{}/_matrix/client/versions", self.base)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("server exited at start-up: {status}");
            }
            assert!(Instant::now() < deadline, "server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// The server's resident memory (VmRSS), in bytes.
    pub fn resident_bytes(&self) -> u64 {
        let pid = self.pid().expect("server running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kb * 1024
    }

    /// The `host:port` the server's client API listens on.
    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_owned()
    }

    /// Kills the process at once (SIGKILL): nothing is flushed on the way out.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill server");
        }
    }

    /// Runs the binary with a sub-command over this server's configuration.
    pub async fn command(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(binary());
        for (k, v) in &self.env {
            cmd.env(format!("DIPLOMATIE_{k}"), v);
        }
        cmd.env("DIPLOMATIE_LOG", "warn").args(args).output().await.expect("run diplomatie")
    }

    pub fn client(&self) -> Client {
        Client {
            base: self.base.clone(),
            http: reqwest::Client::new(),
            token: None,
            user_id: String::new(),
            device_id: String::new(),
        }
    }

    /// Logs a user in with a password and returns its client.
    pub async fn login(&self, user: &str, password: &str) -> Client {
        let mut c = self.client();
        let body = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": user }, "password": password });
        let (status, v) = c.post("/_matrix/client/v3/login", &body).await;
        assert_eq!(status, 200, "{v}");
        c.token = Some(v["access_token"].as_str().unwrap().to_owned());
        c.user_id = v["user_id"].as_str().unwrap().to_owned();
        c.device_id = v["device_id"].as_str().unwrap().to_owned();
        c
    }

    /// A server administrator `root` (password `pw`), made with the command line, logged in.
    pub async fn admin(&self) -> Client {
        let out = self.command(&["user", "create", "root", "--password", "pw", "--admin"]).await;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        self.login("root", "pw").await
    }

    /// Registers a guest (`kind=guest`; the server must allow guests) and returns its client.
    pub async fn register_guest(&self) -> Client {
        let mut guest = self.client();
        let (status, v) = guest.post("/_matrix/client/v3/register?kind=guest", &json!({})).await;
        assert_eq!(status, 200, "{v}");
        guest.token = Some(v["access_token"].as_str().unwrap().to_owned());
        guest.user_id = v["user_id"].as_str().unwrap().to_owned();
        guest
    }

    /// Registers a user through the spec's UIA flow (`m.login.dummy`) and returns its client.
    pub async fn register(&self, localpart: &str) -> Client {
        let mut c = self.client();
        let body =
            json!({ "username": localpart, "password": "correct horse", "initial_device_display_name": "test device" });
        let (status, first) = c.post("/_matrix/client/v3/register", &body).await;
        assert_eq!(status, 401, "{first}");
        let mut body = body;
        body["auth"] = json!({ "type": "m.login.dummy", "session": first["session"] });
        let (status, reg) = c.post("/_matrix/client/v3/register", &body).await;
        assert_eq!(status, 200, "{reg}");
        c.token = Some(reg["access_token"].as_str().unwrap().to_owned());
        c.user_id = reg["user_id"].as_str().unwrap().to_owned();
        c.device_id = reg["device_id"].as_str().unwrap().to_owned();
        c
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if let Some(name) = self.pg_database.take() {
            // Drop the database from a thread of its own: Drop cannot await.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async {
                    let mut admin = connect_pg().await;
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await;
                });
            })
            .join();
        }
    }
}

async fn connect_pg() -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(POSTGRES_ADMIN_URL).await.expect("PostgreSQL at 127.0.0.1:5432 (database test)")
}

fn rand_suffix() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().gen();
    format!("{n:016x}")
}

/// A Matrix client speaking raw HTTP: every call returns the status and the JSON body.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
    pub token: Option<String>,
    pub user_id: String,
    pub device_id: String,
}

impl Client {
    pub async fn request(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// Sends a raw body (for malformed-input tests).
    pub async fn raw(&self, method: reqwest::Method, path: &str, body: Vec<u8>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.base, path)).body(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request(reqwest::Method::GET, path, None).await
    }
    /// Waits until `check` holds of GET `path` answered 200 (up to 20 s), and answers it.
    pub async fn until(&self, path: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (status, v) = self.get(path).await;
            if status == 200 && check(&v) {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "{path}: {v}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.request(reqwest::Method::POST, path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.request(reqwest::Method::PUT, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.request(reqwest::Method::DELETE, path, None).await
    }

    /// Like `get`/`post`/`put`, but panics unless the status is 200.
    pub async fn ok(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Value {
        let (status, v) = self.request(method.clone(), path, body).await;
        assert_eq!(status, 200, "{method} {path}: {v}");
        v
    }

    pub async fn create_room(&self, body: Value) -> String {
        let v = self.ok(reqwest::Method::POST, "/_matrix/client/v3/createRoom", Some(&body)).await;
        v["room_id"].as_str().unwrap().to_owned()
    }

    pub async fn send_text(&self, room: &str, text: &str) -> String {
        let txn = rand_suffix();
        let v = self
            .ok(
                reqwest::Method::PUT,
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
                Some(&json!({ "msgtype": "m.text", "body": text })),
            )
            .await;
        v["event_id"].as_str().unwrap().to_owned()
    }

    pub async fn join(&self, room: &str) -> (u16, Value) {
        self.post(&format!("/_matrix/client/v3/join/{}", urlencode(room)), &json!({})).await
    }

    pub async fn invite(&self, room: &str, user: &str) -> (u16, Value) {
        self.post(&format!("/_matrix/client/v3/rooms/{room}/invite"), &json!({ "user_id": user })).await
    }

    pub async fn sync(&self, since: Option<&str>, extra: &str) -> Value {
        let mut path = "/_matrix/client/v3/sync?".to_owned();
        if let Some(s) = since {
            path.push_str(&format!("since={s}&"));
        }
        path.push_str(extra);
        self.ok(reqwest::Method::GET, &path, None).await
    }
}

/// Percent-encodes a path segment (room ids, aliases, event ids with `/` and `+`).
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Asserts an error response: status and errcode.
#[track_caller]
pub fn assert_error(resp: &(u16, Value), status: u16, errcode: &str) {
    assert_eq!(resp.0, status, "expected {status} {errcode}, got {} {}", resp.0, resp.1);
    assert_eq!(resp.1["errcode"], errcode, "expected {errcode}: {}", resp.1);
}

/// Declares a scenario once and runs it on both backends: `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::Backend::Sqlite).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::Backend::Postgres).await;
                }
            }
        )*
    };
}

/// Clears `user` for DR (an administrator's call), or with `device`, approves that device of
/// theirs for DR.
pub async fn clear_dr(root: &Client, user_id: &str, device: Option<&str>) {
    let path = match device {
        None => format!("/_diplomatie/admin/v1/users/{}/clearance", urlencode(user_id)),
        Some(d) => format!("/_diplomatie/admin/v1/users/{}/devices/{}/clearance", urlencode(user_id), urlencode(d)),
    };
    let body = if device.is_some() { json!({ "dr": true }) } else { json!({ "clearance": "DR" }) };
    let (status, v) = root.put(&path, &body).await;
    assert_eq!(status, 200, "{v}");
}

/// Every byte the server keeps: its data directory's files (database, search index) and, on
/// PostgreSQL, every row of every table as text.
pub async fn everything_stored(server: &TestServer) -> Vec<u8> {
    let mut all = Vec::new();
    let mut dirs = vec![server.data_dir.path().to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                all.extend(std::fs::read(&path).unwrap_or_default());
            }
        }
    }
    if server.backend == Backend::Postgres {
        use sqlx::{Connection, Row};
        let mut pg = sqlx::PgConnection::connect(&server.database_url).await.unwrap();
        let tables: Vec<String> =
            sqlx::query("SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'")
                .fetch_all(&mut pg)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
        for table in tables {
            for row in sqlx::query(&format!("SELECT t::text FROM \"{table}\" t")).fetch_all(&mut pg).await.unwrap() {
                all.extend(row.get::<String, _>(0).into_bytes());
            }
        }
    }
    all
}
