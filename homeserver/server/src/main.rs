//! The `diplomatie` command: runs the homeserver, and administers it from the command line.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use diplomatie_service::{Config, Services};

#[derive(Parser)]
#[command(name = "diplomatie", version, about = "The Diplomatie Matrix homeserver")]
struct Cli {
    /// Configuration file (TOML); every option can also be set by a DIPLOMATIE_* variable.
    #[arg(long, short, env = "DIPLOMATIE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the homeserver (the default).
    Serve,
    /// Manages user accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manages registration tokens.
    RegistrationToken {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manages the full-text search index.
    Search {
        #[command(subcommand)]
        command: SearchCommand,
    },
    /// The ministry's organisation (functional groups, communities, clearances).
    Org {
        #[command(subcommand)]
        command: OrgCommand,
    },
}

#[derive(Subcommand)]
enum OrgCommand {
    /// Imports an organisation from a YAML file (or a CSV file of users with --csv); importing
    /// the same file twice changes nothing. The server must be stopped (with it running, use
    /// POST /_diplomatie/admin/v1/import). See config/organisation.example.yaml.
    Import {
        file: PathBuf,
        #[arg(long)]
        csv: bool,
    },
}

#[derive(Subcommand)]
enum SearchCommand {
    /// Empties the index and indexes every event of the database again (stop the server first).
    Rebuild,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Creates a user account.
    Create {
        /// The localpart (the part between @ and :).
        localpart: String,
        #[arg(long)]
        password: String,
        #[arg(long)]
        displayname: Option<String>,
        /// Makes the user a server administrator.
        #[arg(long)]
        admin: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Creates a registration token and prints it.
    Create {
        /// The token itself (random when omitted).
        #[arg(long)]
        token: Option<String>,
        /// How many registrations it allows (unlimited when omitted).
        #[arg(long)]
        uses: Option<i64>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DIPLOMATIE_LOG")
                .unwrap_or_else(|_| "info,sqlx=warn,ruma_state_res=warn,tower_http=info".into()),
        )
        .init();
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref()).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    let command = cli.command.unwrap_or(Command::Serve);
    // One process writes to a data directory at a time: the server, or a command that writes
    // rooms (those would race the server's stream positions and caches).
    let _lock = match &command {
        Command::Serve | Command::Org { .. } | Command::Search { .. } => Some(lock_data_dir(&config)?),
        _ => None,
    };
    let services = match command {
        Command::Serve => Services::start_serving(config).await?,
        _ => Services::start(config).await?,
    };
    match command {
        Command::Serve => serve(services).await,
        Command::User { command: UserCommand::Create { localpart, password, displayname, admin } } => {
            let user = services
                .create_account(Some(&localpart.to_lowercase()), Some(&password), admin, displayname.as_deref())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{user}");
            Ok(())
        }
        Command::RegistrationToken { command: TokenCommand::Create { token, uses } } => {
            let token = services
                .create_registration_token(token.as_deref(), uses, None)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{token}");
            Ok(())
        }
        Command::Org { command: OrgCommand::Import { file, csv } } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let org = diplomatie_service::organisation::Organisation::parse(&text, csv)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let started = std::time::Instant::now();
            let report = services.import_organisation(&org).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}", serde_json::to_string(&report)?);
            eprintln!("imported in {:.1} s", started.elapsed().as_secs_f64());
            services.db.close().await;
            Ok(())
        }
        Command::Search { command: SearchCommand::Rebuild } => {
            let position = services.rebuild_search_index().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("search index rebuilt up to stream position {position}");
            Ok(())
        }
    }
}

/// Takes the data directory's lock, held until the process ends.
fn lock_data_dir(config: &Config) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let path = config.data_dir.join("diplomatie.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another Diplomatie process (a running server?) uses the data directory {}; stop it, or \
             use the admin API",
            config.data_dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

async fn serve(services: std::sync::Arc<Services>) -> anyhow::Result<()> {
    let addr: SocketAddr =
        services.config.listen.parse().with_context(|| format!("invalid listen address {}", services.config.listen))?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(server_name = %services.server_name(), %addr, "Diplomatie is listening");
    let app = diplomatie_api::router(services.clone());
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    services.db.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM, so that in-flight requests finish and the database closes.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
