//! A small harness for the matrix-rust-sdk tests: starts the real `diplomatie` binary (from
//! `DIPLOMATIE_BIN`) on a free loopback port, on SQLite or on a fresh PostgreSQL database, and
//! registers users through the spec's UIA flow. The server stops when the value is dropped.

use std::{
    process::Stdio,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use serde_json::{json, Value};
use tokio::process::{Child, Command};

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct Server {
    pub base: String,
    pub server_name: String,
    _dir: tempfile::TempDir,
    child: Child,
    pg_database: Option<String>,
}

fn psql(sql: &str) {
    let status = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "5432",
            "-U",
            "postgres",
            "-d",
            "test",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .status()
        .expect("psql");
    assert!(status.success(), "{sql}");
}

/// PostgreSQL databases made by this process so far (each test server gets its own).
static DATABASES: AtomicUsize = AtomicUsize::new(0);

impl Server {
    pub async fn start(backend: Backend) -> Server {
        Server::start_with(backend, false).await
    }

    /// A server that federates, named `127.0.0.1:<port>` after its built-in HTTPS listener.
    pub async fn start_federating(backend: Backend) -> Server {
        Server::start_with(backend, true).await
    }

    async fn start_with(backend: Backend, federating: bool) -> Server {
        let bin = std::env::var("DIPLOMATIE_BIN").expect("DIPLOMATIE_BIN names the server binary");
        let dir = tempfile::tempdir().unwrap();
        // A port the system chooses, read from the server's log: one chosen here beforehand
        // could be taken by another test's server in between.
        let mut cmd = Command::new(bin);
        cmd.env("DIPLOMATIE_LISTEN", "127.0.0.1:0")
            .env("DIPLOMATIE_DATA_DIR", dir.path())
            .env("DIPLOMATIE_REGISTRATION__ENABLED", "true")
            .env("DIPLOMATIE_RATE_LIMITS__ENABLED", "false")
            .env("DIPLOMATIE_LOG", "warn,diplomatie::listening=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut server_name = "localhost".to_owned();
        if federating {
            let tls_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            server_name = format!("127.0.0.1:{tls_port}");
            cmd.env("DIPLOMATIE_SERVER_NAME", &server_name)
                .env("DIPLOMATIE_FEDERATION__ENABLED", "true")
                .env("DIPLOMATIE_FEDERATION__TLS_LISTEN", &server_name)
                .env("DIPLOMATIE_FEDERATION__INSECURE_LOOPBACK_TLS", "true")
                .env("DIPLOMATIE_FEDERATION__IP_RANGE_ALLOWLIST", r#"["127.0.0.0/8"]"#)
                .env("DIPLOMATIE_FEDERATION__MAX_BACKOFF_MS", "2000");
        }
        let pg_database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let name = format!("dip_sdk_{}_{}", std::process::id(), DATABASES.fetch_add(1, Ordering::Relaxed));
                psql(&format!("CREATE DATABASE {name}"));
                cmd.env("DIPLOMATIE_DATABASE_URL", format!("postgres://postgres@127.0.0.1:5432/{name}"));
                Some(name)
            }
        };
        let mut child = cmd.spawn().expect("start diplomatie");
        let stdout = child.stdout.take().expect("piped stdout");
        let (found, mut listening) = tokio::sync::mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match line.split_whitespace().find_map(|w| w.strip_prefix("addr=")) {
                    Some(addr) if line.contains("Diplomatie is listening") => {
                        let _ = found.send(addr.to_owned());
                    }
                    _ => eprintln!("{line}"),
                }
            }
        });
        let addr = tokio::time::timeout(Duration::from_secs(30), listening.recv())
            .await
            .ok()
            .flatten()
            .expect("diplomatie did not say where it listens");
        let base = format!("http://{addr}");
        for _ in 0..600 {
            if reqwest::get(format!("{base}/_matrix/client/versions")).await.is_ok_and(|r| r.status().is_success()) {
                return Server { base, server_name, _dir: dir, child, pg_database };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("diplomatie did not start");
    }

    /// Registers `user` with the password `correct horse` (open registration, m.login.dummy).
    pub async fn register(&self, user: &str) {
        register(&self.base, user).await
    }
}

/// Registers `user` on the server at `base` with the password `correct horse`.
pub async fn register(base: &str, user: &str) {
    {
        let http = reqwest::Client::new();
        let url = format!("{base}/_matrix/client/v3/register");
        let body = json!({ "username": user, "password": "correct horse", "inhibit_login": true });
        let first: Value = http.post(&url).json(&body).send().await.unwrap().json().await.unwrap();
        let mut body = body;
        body["auth"] = json!({ "type": "m.login.dummy", "session": first["session"] });
        let resp = http.post(&url).json(&body).send().await.unwrap();
        assert!(resp.status().is_success(), "register {user}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if let Some(name) = self.pg_database.take() {
            psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

/// Synapse (from PyPI: `SYNAPSE_PYTHON` names its Python) on loopback, SQLite, named
/// `127.0.0.1:<port>` after its HTTPS listener (a self-signed certificate), accepting any
/// certificate from the servers it federates with. It stops when the value is dropped.
pub struct Synapse {
    pub base: String,
    pub server_name: String,
    dir: tempfile::TempDir,
    child: Child,
}

impl Synapse {
    pub async fn start() -> Synapse {
        let python = std::env::var("SYNAPSE_PYTHON").expect("SYNAPSE_PYTHON names Synapse's Python");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (tls_port, port) = (free(), free());
        let server_name = format!("127.0.0.1:{tls_port}");
        let openssl = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
            .args([
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
                &format!("{d}/tls.key"),
                "-out",
                &format!("{d}/tls.crt"),
            ])
            .output()
            .expect("openssl");
        assert!(openssl.status.success());
        std::fs::write(
            format!("{d}/log.yaml"),
            format!(
                "version: 1\nformatters: {{p: {{format: '%(asctime)s %(name)s %(levelname)s %(message)s'}}}}\n\
                 handlers: {{f: {{class: logging.FileHandler, filename: {d}/synapse.log, formatter: p}}}}\n\
                 root: {{level: INFO, handlers: [f]}}\ndisable_existing_loggers: false\n"
            ),
        )
        .unwrap();
        let limits = "{per_second: 1000, burst_count: 1000}";
        let secret = |n: u32| format!("{}{}{n}", std::process::id(), tls_port);
        let config = format!(
            "server_name: \"{server_name}\"\npid_file: {d}/homeserver.pid\nreport_stats: false\nlisteners:\n\
             - {{port: {tls_port}, bind_addresses: ['127.0.0.1'], type: http, tls: true, resources: [{{names: [federation, client]}}]}}\n\
             - {{port: {port}, bind_addresses: ['127.0.0.1'], type: http, tls: false, resources: [{{names: [client]}}]}}\n\
             tls_certificate_path: {d}/tls.crt\ntls_private_key_path: {d}/tls.key\nfederation_verify_certificates: false\n\
             federation_ip_range_blacklist: []\nip_range_blacklist: []\nip_range_whitelist: ['127.0.0.1']\n\
             trusted_key_servers: []\nsuppress_key_server_warning: true\n\
             database: {{name: sqlite3, args: {{database: {d}/homeserver.db}}}}\nlog_config: {d}/log.yaml\n\
             media_store_path: {d}/media\nsigning_key_path: {d}/signing.key\nmacaroon_secret_key: \"{}\"\n\
             form_secret: \"{}\"\nregistration_shared_secret: \"{}\"\nenable_registration: true\n\
             enable_registration_without_verification: true\nrc_message: {limits}\nrc_registration: {limits}\n\
             rc_login: {{address: {limits}, account: {limits}, failed_attempts: {limits}}}\n\
             rc_joins: {{local: {limits}, remote: {limits}}}\n\
             rc_key_requests: {limits}\n",
            secret(1),
            secret(2),
            secret(3),
        );
        let config_path = format!("{d}/homeserver.yaml");
        std::fs::write(&config_path, config).unwrap();
        let args = ["-m", "synapse.app.homeserver", "--config-path", config_path.as_str()];
        let keys = std::process::Command::new(&python).args(args).arg("--generate-keys").current_dir(&d).output();
        assert!(keys.expect("synapse").status.success(), "synapse --generate-keys");
        let child = Command::new(&python)
            .args(args)
            .current_dir(&d)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start synapse");
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..900 {
            if reqwest::get(format!("{base}/_matrix/client/versions")).await.is_ok_and(|r| r.status().is_success()) {
                return Synapse { base, server_name, dir, child };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("synapse did not start; see {d}/synapse.log");
    }

    /// Synapse's log, for a failing test to show.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("synapse.log")).unwrap_or_default()
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A logged-in matrix-sdk client (password `correct horse`) whose decrypted text messages
/// arrive on the returned channel.
pub async fn login(
    base: &str,
    user: &str,
    device: &str,
) -> (matrix_sdk::Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use matrix_sdk::{
        config::SyncSettings,
        room::Room,
        ruma::events::room::message::{MessageType, OriginalSyncRoomMessageEvent},
    };
    let client = matrix_sdk::Client::builder().homeserver_url(base).build().await.expect("client");
    client.matrix_auth().login_username(user, "correct horse").device_id(device).send().await.expect("login");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    client.add_event_handler(move |ev: OriginalSyncRoomMessageEvent, _room: Room| {
        let tx = tx.clone();
        async move {
            if let MessageType::Text(text) = ev.content.msgtype {
                let _ = tx.send(text.body);
            }
        }
    });
    client.sync_once(SyncSettings::default().timeout(Duration::ZERO)).await.expect("first sync");
    (client, rx)
}

/// Syncs (up to `rounds` times) until `body` was decrypted and delivered to the client's
/// handler; answers whether it was.
pub async fn received(
    client: &matrix_sdk::Client,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    body: &str,
    rounds: usize,
) -> bool {
    let settings = matrix_sdk::config::SyncSettings::default().timeout(Duration::from_millis(500));
    for _ in 0..rounds {
        client.sync_once(settings.clone()).await.expect("sync");
        while let Ok(got) = rx.try_recv() {
            if got == body {
                return true;
            }
        }
    }
    false
}
