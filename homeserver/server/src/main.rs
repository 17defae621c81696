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
        Command::Search { command: SearchCommand::Rebuild } => {
            let position = services.rebuild_search_index().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("search index rebuilt up to stream position {position}");
            Ok(())
        }
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
