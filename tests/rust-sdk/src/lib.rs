//! A small harness for the matrix-rust-sdk tests: starts the real `diplomatie` binary (from
//! `DIPLOMATIE_BIN`) on a free loopback port, on SQLite or on a fresh PostgreSQL database, and
//! registers users through the spec's UIA flow. The server stops when the value is dropped.

use std::{process::Stdio, time::Duration};

use serde_json::{json, Value};
use tokio::process::{Child, Command};

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct Server {
    pub base: String,
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

impl Server {
    pub async fn start(backend: Backend) -> Server {
        let bin = std::env::var("DIPLOMATIE_BIN").expect("DIPLOMATIE_BIN names the server binary");
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cmd = Command::new(bin);
        cmd.env("DIPLOMATIE_LISTEN", format!("127.0.0.1:{port}"))
            .env("DIPLOMATIE_DATA_DIR", dir.path())
            .env("DIPLOMATIE_REGISTRATION__ENABLED", "true")
            .env("DIPLOMATIE_RATE_LIMITS__ENABLED", "false")
            .env("DIPLOMATIE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        let pg_database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let name = format!("dip_sdk_{port}_{}", std::process::id());
                psql(&format!("CREATE DATABASE {name}"));
                cmd.env("DIPLOMATIE_DATABASE_URL", format!("postgres://postgres@127.0.0.1:5432/{name}"));
                Some(name)
            }
        };
        let child = cmd.spawn().expect("start diplomatie");
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..600 {
            if reqwest::get(format!("{base}/_matrix/client/versions")).await.is_ok_and(|r| r.status().is_success()) {
                return Server { base, _dir: dir, child, pg_database };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("diplomatie did not start");
    }

    /// Registers `user` with the password `correct horse` (open registration, m.login.dummy).
    pub async fn register(&self, user: &str) {
        let http = reqwest::Client::new();
        let url = format!("{}/_matrix/client/v3/register", self.base);
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
