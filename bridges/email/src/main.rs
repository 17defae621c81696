//! `diplomatie-email`: the e-mail bridge, an application service of the homeserver.
//!
//! On first start it writes its registration file (where the homeserver loads it from), its
//! DKIM key and a TLS certificate for STARTTLS; then it serves SMTP for the mail domain and
//! the application-service API for the homeserver.

mod appservice;
mod config;
mod inbound;
mod matrix;
mod outbound;
mod smtp;
mod store;

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use mail_auth::{
    hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts},
    MessageAuthenticator,
};
use rand::{distributions::Alphanumeric, Rng};

use crate::{config::Config, matrix::Matrix, store::Store};

/// The state event that classifies a room (NP or DR).
pub const CLASSIFICATION: &str = "fr.diplomatie.classification";
/// The msgtype and content key of formal correspondence.
pub const CORRESPONDENCE: &str = "fr.diplomatie.correspondence";

#[derive(Parser)]
#[command(name = "diplomatie-email", about = "The e-mail bridge of Diplomatie")]
struct Cli {
    /// A TOML configuration file (see config/email.example.toml).
    #[arg(long, short, env = "DIPLOMATIE_EMAIL_CONFIG")]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serves (the default).
    Run,
    /// Writes the registration file (if missing) and prints its path.
    Register,
    /// Prints the DNS TXT record that publishes the DKIM key.
    DkimRecord,
}

pub struct Bridge {
    pub config: Config,
    pub store: Store,
    pub matrix: Matrix,
    pub mail_domain: String,
    pub authenticator: MessageAuthenticator,
    /// The DKIM key, PKCS#8 DER.
    pub dkim_key: Vec<u8>,
    pub tls: tokio_rustls::TlsAcceptor,
    /// The relay outbound mail leaves through.
    pub relay: mail_send::SmtpClientBuilder<String>,
    /// The token the homeserver presents.
    pub hs_token: String,
}

/// The tokens of a registration file.
struct Tokens {
    as_token: String,
    hs_token: String,
}

fn token() -> String {
    rand::thread_rng().sample_iter(&Alphanumeric).take(48).map(char::from).collect()
}

/// Reads the registration file, writing it first when missing.
fn registration(config: &Config) -> anyhow::Result<Tokens> {
    let path = &config.registration;
    if !path.exists() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let url = format!("http://{}", config.listen);
        let text = format!(
            "# Written by diplomatie-email: the homeserver loads it (app_service_config_files, or\n\
             # every file of <data_dir>/appservices/) at start-up.\n\
             id: {id}\nurl: {url}\nas_token: {as_token}\nhs_token: {hs_token}\n\
             sender_localpart: {sender}\nrate_limited: false\nprotocols: [email]\n\
             namespaces:\n  users:\n    - exclusive: true\n      regex: '@{prefix}.*'\n  aliases: []\n  rooms: []\n",
            id = config.id,
            as_token = token(),
            hs_token = token(),
            sender = config.sender_localpart,
            prefix = regex_escape(&config.puppet_prefix),
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        tracing::info!(path = %path.display(), "registration written: the homeserver loads it when it starts");
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let doc = docs.first().context("an empty registration file")?;
    let get =
        |k: &str| doc[k].as_str().map(str::to_owned).with_context(|| format!("{k} missing from {}", path.display()));
    Ok(Tokens { as_token: get("as_token")?, hs_token: get("hs_token")? })
}

fn regex_escape(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c.to_string() } else { format!("\\{c}") }).collect()
}

/// The DKIM key (PKCS#8 DER), made on first start.
fn dkim_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    if !path.exists() {
        let der = mail_auth::common::crypto::Ed25519Key::generate_pkcs8().map_err(|e| anyhow::anyhow!("{e}"))?;
        let pem = pem_wrap("PRIVATE KEY", &der);
        std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut reader = std::io::BufReader::new(std::fs::File::open(path)?);
    match rustls_pemfile::private_key(&mut reader)? {
        Some(rustls::pki_types::PrivateKeyDer::Pkcs8(key)) => Ok(key.secret_pkcs8_der().to_vec()),
        _ => anyhow::bail!("{} holds no PKCS#8 Ed25519 key", path.display()),
    }
}

fn pem_wrap(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// The TXT record of `<selector>._domainkey.<domain>`.
fn dkim_record(der: &[u8]) -> anyhow::Result<String> {
    use base64::Engine;
    let key = mail_auth::common::crypto::Ed25519Key::from_pkcs8_der(der).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(format!("v=DKIM1; k=ed25519; p={}", base64::engine::general_purpose::STANDARD.encode(key.public_key())))
}

/// STARTTLS: the configured certificate, or a self-signed one made on first start.
fn tls(config: &Config, domain: &str) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let (cert, key) = match (&config.tls.certificate, &config.tls.private_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let (c, k) = (config.data_dir.join("tls.crt"), config.data_dir.join("tls.key"));
            if !c.exists() || !k.exists() {
                let made = rcgen::generate_simple_self_signed(vec![domain.to_owned()])?;
                std::fs::write(&c, made.cert.pem())?;
                std::fs::write(&k, made.key_pair.serialize_pem())?;
            }
            (c, k)
        }
    };
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(&cert)?))
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(std::fs::File::open(&key)?))?
        .context("no private key for STARTTLS")?;
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

fn authenticator(config: &Config) -> anyhow::Result<MessageAuthenticator> {
    if config.auth.nameservers.is_empty() {
        return MessageAuthenticator::new_system_conf().map_err(|e| anyhow::anyhow!("DNS resolver: {e}"));
    }
    let servers = config
        .auth
        .nameservers
        .iter()
        .map(|addr: &SocketAddr| {
            let mut server = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut server.connections {
                c.port = addr.port();
            }
            server
        })
        .collect();
    let mut options = ResolverOpts::default();
    options.timeout = Duration::from_secs(3);
    MessageAuthenticator::new(ResolverConfig::from_name_servers(servers), options)
        .map_err(|e| anyhow::anyhow!("DNS resolver: {e}"))
}

/// Connects to the homeserver, waiting for it (it loads the registration when it starts).
async fn connect(config: &Config, as_token: &str) -> anyhow::Result<Matrix> {
    let mut wait = Duration::from_millis(200);
    let mut told = false;
    loop {
        match Matrix::connect(&config.homeserver_url, as_token).await {
            Ok(m) if !m.server_name.is_empty() => return Ok(m),
            Ok(_) => anyhow::bail!("the homeserver did not say who the bot is"),
            Err(e) => {
                if !told {
                    tracing::warn!(
                        error = %e, homeserver = %config.homeserver_url, registration = %config.registration.display(),
                        "waiting for the homeserver; it must have loaded the registration (restart it after the bridge's first start)"
                    );
                    told = true;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    let tokens = registration(&config)?;
    let dkim_key = dkim_key(&config.dkim_key())?;
    let store = Store::connect(&config.database_url()).await?;
    let matrix = connect(&config, &tokens.as_token).await?;
    let mail_domain = if config.mail_domain.is_empty() {
        matrix.server_name.rsplit_once(':').map_or(matrix.server_name.as_str(), |(host, _)| host).to_owned()
    } else {
        config.mail_domain.to_lowercase()
    };
    let bridge = Arc::new(Bridge {
        tls: tls(&config, &mail_domain)?,
        relay: outbound::relay_client(&config, &mail_domain)?,
        authenticator: authenticator(&config)?,
        store,
        matrix,
        mail_domain,
        dkim_key,
        hs_token: tokens.hs_token,
        config,
    });
    let http = tokio::net::TcpListener::bind(bridge.config.listen).await?;
    let smtp = tokio::net::TcpListener::bind(bridge.config.smtp_listen).await?;
    tracing::info!(
        target: "diplomatie_email::listening",
        smtp = %smtp.local_addr()?, appservice = %http.local_addr()?, domain = %bridge.mail_domain,
        "Diplomatie e-mail bridge is listening"
    );
    tokio::spawn(smtp::serve(bridge.clone(), smtp));
    let app = appservice::router(bridge);
    axum::serve(http, app).with_graceful_shutdown(shutdown()).await?;
    Ok(())
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DIPLOMATIE_EMAIL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => tokio::runtime::Runtime::new()?.block_on(run(config)),
        Command::Register => {
            registration(&config)?;
            println!("{}", config.registration.display());
            Ok(())
        }
        Command::DkimRecord => {
            std::fs::create_dir_all(&config.data_dir)?;
            let key = dkim_key(&config.dkim_key())?;
            println!("{}._domainkey IN TXT \"{}\"", config.dkim.selector, dkim_record(&key)?);
            Ok(())
        }
    }
}
