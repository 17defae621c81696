//! The bridge's configuration: defaults that run beside a server started with its own
//! defaults, then a TOML file (`--config`), then `DIPLOMATIE_EMAIL_*` variables (`__` between
//! levels: `DIPLOMATIE_EMAIL_RELAY__PORT=2525`).

use std::{net::SocketAddr, path::PathBuf};

use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The homeserver's client-server API, as the bridge reaches it.
    pub homeserver_url: String,
    /// Where the homeserver reaches the bridge (application-service API).
    pub listen: SocketAddr,
    /// The SMTP listener for the mail domain (inbound mail).
    pub smtp_listen: SocketAddr,
    /// The mail domain whose addresses lead to rooms (`<slug>@mail_domain`). Empty: the
    /// homeserver's name.
    pub mail_domain: String,
    /// The bridge's own files: database, DKIM key, TLS certificate when none is given.
    pub data_dir: PathBuf,
    /// `sqlite://...` or `postgres://...`; empty means SQLite in `data_dir`.
    pub database_url: String,
    /// The registration file written on first start, for the homeserver to load (the server
    /// reads every file of `<its data_dir>/appservices/` at start-up).
    pub registration: PathBuf,
    /// The application service's id, its bot's localpart and the prefix of its puppets.
    pub id: String,
    pub sender_localpart: String,
    pub puppet_prefix: String,
    /// The largest message accepted (SMTP `SIZE`), in bytes.
    pub max_message_bytes: usize,
    pub relay: Relay,
    pub dkim: Dkim,
    pub auth: Auth,
    pub tls: Tls,
}

/// The relay outbound mail leaves through.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Relay {
    pub host: String,
    pub port: u16,
    /// `none`, `starttls` or `implicit`.
    pub tls: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Accept any certificate from the relay (a relay on loopback with a self-signed one).
    pub allow_invalid_certs: bool,
}

/// How outbound mail is signed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Dkim {
    pub selector: String,
    /// An Ed25519 key (PKCS#8 PEM); made on first start when missing. Empty: `data_dir/dkim.pem`.
    pub key: PathBuf,
}

/// How inbound mail is authenticated.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Auth {
    /// What to do with mail failing DMARC (or SPF when its domain has no DMARC policy):
    /// `reject` (SMTP 550) or `mark` (posted with the verdict shown).
    pub on_fail: String,
    /// Name servers for SPF, DKIM and DMARC (`ip:port`); empty: the system's.
    pub nameservers: Vec<SocketAddr>,
}

/// STARTTLS on the SMTP listener; without a certificate, a self-signed one is made.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Tls {
    pub certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            homeserver_url: "http://127.0.0.1:8008".into(),
            listen: "127.0.0.1:8009".parse().unwrap(),
            smtp_listen: "127.0.0.1:2525".parse().unwrap(),
            mail_domain: String::new(),
            data_dir: PathBuf::from("data/email"),
            database_url: String::new(),
            registration: PathBuf::from("data/appservices/email.yaml"),
            id: "email".into(),
            sender_localpart: "email".into(),
            puppet_prefix: "email_".into(),
            max_message_bytes: 25 * 1024 * 1024,
            relay: Relay::default(),
            dkim: Dkim { selector: "diplomatie".into(), key: PathBuf::new() },
            auth: Auth { on_fail: "reject".into(), nameservers: Vec::new() },
            tls: Tls::default(),
        }
    }
}

impl Default for Relay {
    fn default() -> Self {
        Relay {
            host: "127.0.0.1".into(),
            port: 25,
            tls: "none".into(),
            username: None,
            password: None,
            allow_invalid_certs: false,
        }
    }
}

impl Config {
    pub fn load(file: Option<&std::path::Path>) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        let config: Config = figment.merge(Env::prefixed("DIPLOMATIE_EMAIL_").split("__")).extract()?;
        if !matches!(config.relay.tls.as_str(), "none" | "starttls" | "implicit") {
            anyhow::bail!("relay.tls must be none, starttls or implicit");
        }
        if !matches!(config.auth.on_fail.as_str(), "reject" | "mark") {
            anyhow::bail!("auth.on_fail must be reject or mark");
        }
        Ok(config)
    }

    pub fn database_url(&self) -> String {
        if self.database_url.is_empty() {
            format!("sqlite://{}?mode=rwc", self.data_dir.join("bridge.db").display())
        } else {
            self.database_url.clone()
        }
    }

    pub fn dkim_key(&self) -> PathBuf {
        if self.dkim.key.as_os_str().is_empty() {
            self.data_dir.join("dkim.pem")
        } else {
            self.dkim.key.clone()
        }
    }
}
