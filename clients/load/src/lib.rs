//! What the load tools share: a small client of the client-server API (open registration with
//! `m.login.dummy`, calls retried while the server answers 429), percentiles, and the server
//! process's memory and CPU time read from `/proc`.

use std::{sync::Arc, time::Duration};

use anyhow::{bail, Context, Result};
use futures::future::join_all;
use serde_json::{json, Value};

#[derive(Clone)]
pub struct User {
    pub id: String,
    pub token: String,
}

pub struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    /// A client of the server at `url`, which must be on loopback.
    pub fn new(url: &str) -> Result<Api> {
        let host = url.trim_start_matches("http://").split(['/', ':']).next().unwrap_or("");
        if !(host == "localhost" || host.starts_with("127.") || host == "[::1]") {
            bail!("the load tools only target loopback addresses");
        }
        let http = reqwest::Client::builder().pool_max_idle_per_host(1000).timeout(Duration::from_secs(120)).build()?;
        Ok(Api { http, base: url.trim_end_matches('/').to_owned() })
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let v = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, v))
    }

    /// Calls until the server stops answering 429 (it may rate-limit set-up traffic).
    pub async fn ok(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value> {
        loop {
            let (status, v) = self.call(method.clone(), path, token, body).await?;
            match status {
                200 => return Ok(v),
                429 => {
                    let wait = v["retry_after_ms"].as_u64().unwrap_or(500);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                _ => bail!("{method} {path}: {status} {v}"),
            }
        }
    }

    pub async fn register(&self, name: &str) -> Result<User> {
        let body = json!({ "username": name, "password": "load-test-password" });
        let (status, first) =
            self.call(reqwest::Method::POST, "/_matrix/client/v3/register", None, Some(&body)).await?;
        if status != 401 {
            bail!("register {name}: expected 401, got {status} {first}");
        }
        let mut body = body;
        body["auth"] = json!({ "type": "m.login.dummy", "session": first["session"] });
        let v = self.ok(reqwest::Method::POST, "/_matrix/client/v3/register", None, Some(&body)).await?;
        Ok(User {
            id: v["user_id"].as_str().context("user_id")?.to_owned(),
            token: v["access_token"].as_str().context("token")?.to_owned(),
        })
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The CPU time a process has used (user and system), in milliseconds, from `/proc`.
pub fn cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at `) `.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks * 1000.0 / per_second)
}

/// Registers `n` users named `{prefix}{i}`, 20 at a time.
pub async fn register_many(api: &Arc<Api>, prefix: &str, n: usize) -> Result<Vec<User>> {
    let mut users = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(20) {
        let batch = join_all(chunk.iter().map(|i| {
            let api = api.clone();
            let name = format!("{prefix}{i}");
            async move { api.register(&name).await }
        }))
        .await;
        for u in batch {
            users.push(u?);
        }
    }
    Ok(users)
}
