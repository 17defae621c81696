//! The `diplomatie` command: runs the homeserver, and administers it from the command line.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;

use clap::{Parser, Subcommand};
use diplomatie_service::{Config, Services};

mod listener;
mod turn;

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
    /// Transfers to the archives service (SEDA 2.3 packages).
    Archive {
        #[command(subcommand)]
        command: ArchiveCommand,
    },
    /// Checks, offline, the signature of an exported correspondence (the JSON that
    /// GET /_diplomatie/client/v1/correspondence/{reference} answers). Exit status 0 when it
    /// verifies, 1 when it does not.
    Verify {
        /// The exported correspondence ("-" for standard input).
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ArchiveCommand {
    /// Writes the SEDA 2.3 transfer of a functional group for a period (--group, --from,
    /// --to: days, both included), or of a stood-down crisis cell (--cell). The same export
    /// twice gives the same file.
    Export {
        #[arg(long, conflicts_with = "cell", requires_all = ["from", "to"])]
        group: Option<String>,
        /// First day (YYYY-MM-DD, UTC).
        #[arg(long)]
        from: Option<String>,
        /// Last day (YYYY-MM-DD, UTC), included.
        #[arg(long)]
        to: Option<String>,
        /// The cell's space room id.
        #[arg(long, required_unless_present = "group")]
        cell: Option<String>,
        /// Where to write the zip.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Checks a package offline: every file its manifest lists is there, with its size and
    /// SHA-512 digest, and nothing else. Exit status 0 when sound, 1 when not.
    Check { file: PathBuf },
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
    /// Sets a user's clearance (NP or DR).
    Clearance { user: String, level: String },
    /// Approves (on) or withdraws (off) one of a user's devices for DR content.
    DeviceClearance { user: String, device: String, dr: OnOff },
    /// Makes an account an agent's or an external person's.
    Kind { user: String, kind: String },
    /// Creates a functional group (a space with its general and correspondence rooms).
    GroupCreate {
        slug: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        topic: Option<String>,
        /// NP (default) or DR.
        #[arg(long)]
        classification: Option<String>,
        /// A manager (repeat for several).
        #[arg(long = "manager")]
        managers: Vec<String>,
    },
    /// Replaces the managers of a group or community (`groups` or `communities`).
    Managers {
        kind: String,
        slug: String,
        /// A manager (repeat for several).
        #[arg(long = "manager")]
        managers: Vec<String>,
    },
    /// Creates a community of interest.
    CommunityCreate {
        slug: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        manager: String,
        #[arg(long)]
        project: String,
        #[arg(long)]
        topic: Option<String>,
        /// An interest tag (repeat for several).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// open, request (default) or invite.
        #[arg(long, default_value = "request")]
        join: String,
        #[arg(long)]
        externals: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
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

/// `diplomatie verify`: needs no configuration, database nor network.
fn verify(file: &std::path::Path) -> anyhow::Result<()> {
    use diplomatie_service::correspondence::{verify_export, Export};
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let export: Export = serde_json::from_str(&text).context("not an exported correspondence nor a crisis log")?;
    match verify_export(&export) {
        Ok(v) if v.entries > 0 && !v.closed => {
            println!("valid: {} entries of the open log {}, each signed by its author", v.entries, v.reference);
            Ok(())
        }
        Ok(v) => {
            println!(
                "valid: {} signed by {} with {} at {} (ms since the epoch)",
                v.reference, v.author, v.key_id, v.signed_at
            );
            if v.closed {
                println!("{} entries, each signed by its author, all listed by the closed log", v.entries);
            }
            if let Some(n) = v.approvals {
                println!("signature circuit: {n} approvals of the final draft, in the named order, each signed");
            }
            Ok(())
        }
        Err(reason) => {
            eprintln!("INVALID: {reason}");
            std::process::exit(1);
        }
    }
}

/// jemalloc for the server's own allocations: it gives freed pages back to the system at once
/// (glibc keeps them, fragmented, in its arenas, about 10 MB after a burst of requests).
/// (Built without the default `jemalloc` feature, the server uses the system's allocator, which
/// heap profilers such as heaptrack can follow.)
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings: freed pages returned by a background thread, without delay; two arenas
/// (the server's threads are few); small thread caches (objects up to 512 bytes, half the
/// usual count of each): with a dozen threads, full-size caches hold megabytes the server is
/// not using. `_RJEM_MALLOC_CONF` in the environment overrides them.
#[cfg(feature = "jemalloc")]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 106] =
    b"background_thread:true,dirty_decay_ms:0,muzzy_decay_ms:0,narenas:2,tcache_max:512,lg_tcache_nslots_mul:-1\0";

fn main() -> anyhow::Result<()> {
    // What still uses glibc's allocator (SQLite): every thread that allocates would get an
    // arena of its own and keep what is freed in it; the server's threads need no more than two.
    // Blocks of 128 KiB and more are mapped on their own and unmapped when freed: glibc would
    // otherwise raise that threshold after the first such block is freed and serve the next
    // ones from the heap, which keeps them. An administrator's own GLIBC_TUNABLES take
    // precedence.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        // SAFETY: mallopt only changes the allocator's tuning, before any thread is spawned.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        }
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DIPLOMATIE_LOG")
                .unwrap_or_else(|_| "info,sqlx=warn,ruma_state_res=warn,tower_http=info".into()),
        )
        .init();
    // A panic (caught per request by the API, answered M_UNKNOWN) is logged as one line with
    // its place, whatever RUST_BACKTRACE says: a client that can reach one must not be able to
    // fill the disk with backtraces.
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let place = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        tracing::error!(%place, "panic: {message}");
    }));
    let cli = Cli::parse();
    if let Some(Command::Verify { file }) = &cli.command {
        return verify(file);
    }
    if let Some(Command::Archive { command: ArchiveCommand::Check { file } }) = &cli.command {
        return check_package(file);
    }
    let mut config = Config::load(cli.config.as_deref()).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    let command = cli.command.unwrap_or(Command::Serve);
    let relay = if matches!(command, Command::Serve) { turn::prepare(&mut config)? } else { None };
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
        Command::Serve => serve(services, relay).await,
        Command::Verify { file } => verify(&file),
        Command::User { command: UserCommand::Create { localpart, password, displayname, admin } } => {
            let user = services
                .accounts
                .create_account(Some(&localpart.to_lowercase()), Some(&password), admin, displayname.as_deref())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{user}");
            Ok(())
        }
        Command::RegistrationToken { command: TokenCommand::Create { token, uses } } => {
            let token = services
                .accounts
                .create_registration_token(token.as_deref(), uses, None)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{token}");
            Ok(())
        }
        Command::Org { command: OrgCommand::Import { file, csv } } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let org = diplomatie_service::organisation::OrganisationFile::parse(&text, csv)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let started = std::time::Instant::now();
            let report = services.organisation.import_organisation(&org).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}", serde_json::to_string(&report)?);
            eprintln!("imported in {:.1} s", started.elapsed().as_secs_f64());
            services.db.close().await;
            Ok(())
        }
        Command::Org { command } => org_command(&services, command).await.map_err(|e| anyhow::anyhow!("{e}")),
        Command::Archive { command: ArchiveCommand::Check { file } } => check_package(&file),
        Command::Archive { command: ArchiveCommand::Export { group, from, to, cell, out } } => {
            let package = export_package(&services, group, from, to, cell).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            std::fs::write(&out, &package).with_context(|| format!("cannot write {}", out.display()))?;
            println!("{} ({} bytes)", out.display(), package.len());
            Ok(())
        }
        Command::Search { command: SearchCommand::Rebuild } => {
            let covered = services.search.rebuild_search_index().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("search index rebuilt up to stream position {}", covered.high);
            Ok(())
        }
    }
}

/// `diplomatie archive export`: a group's period, or a cell.
async fn export_package(
    services: &Services,
    group: Option<String>,
    from: Option<String>,
    to: Option<String>,
    cell: Option<String>,
) -> Result<Vec<u8>, diplomatie_service::Error> {
    use diplomatie_service::archive::parse_day;
    match (group, from, to, cell) {
        (Some(group), Some(from), Some(to), None) => {
            services.archive.group_package(&group, parse_day(&from)?, parse_day(&to)? + 86_400_000).await
        }
        (None, None, None, Some(cell)) => {
            let id = ruma::OwnedRoomId::try_from(cell)
                .map_err(|_| diplomatie_service::Error::invalid_param("Invalid cell id"))?;
            services.crisis.cell_package(&id).await
        }
        _ => Err(diplomatie_service::Error::invalid_param("Export either --group with --from and --to, or --cell")),
    }
}

/// `diplomatie archive check`: needs no configuration, database nor network.
fn check_package(file: &std::path::Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let report = diplomatie_archive::check(&bytes);
    if report.ok() {
        println!("sound: {} files, each with the size and SHA-512 digest its manifest states", report.files);
        return Ok(());
    }
    for problem in &report.problems {
        eprintln!("INVALID: {problem}");
    }
    std::process::exit(1);
}

/// The organisation's subcommands other than the import, as the server's own account.
async fn org_command(services: &Services, command: OrgCommand) -> Result<(), diplomatie_service::Error> {
    use diplomatie_policies::{AccountKind, Level};
    use diplomatie_service::organisation::{CommunitySpec, GroupSpec, JoinRule};
    let bad = |what: &str| diplomatie_service::Error::invalid_param(what.to_owned());
    let system = services.organisation.system_user().await?;
    match command {
        OrgCommand::Import { .. } => unreachable!("handled by the caller"),
        OrgCommand::Clearance { user, level } => {
            let level = Level::parse(&level).ok_or_else(|| bad("The level is NP or DR"))?;
            let user = services.accounts.parse_local_user(&user)?;
            services.organisation.set_clearance(&system, true, &user, level).await?;
            services.mls.enforce_clearances(&user, &[]).await?;
            println!("{}", serde_json::to_string(&services.portal.clearance_report(&user).await?)?);
        }
        OrgCommand::DeviceClearance { user, device, dr } => {
            let user = services.accounts.parse_local_user(&user)?;
            let device = ruma::OwnedDeviceId::from(device);
            services.portal.set_device_clearance(&system, true, &user, &device, matches!(dr, OnOff::On)).await?;
            services.mls.enforce_clearances(&user, &[]).await?;
            println!("{}", serde_json::to_string(&services.portal.device_clearance_report(&user, &device).await?)?);
        }
        OrgCommand::Kind { user, kind } => {
            let kind = AccountKind::parse(&kind).ok_or_else(|| bad("The kind is agent or external"))?;
            let user = services.accounts.parse_local_user(&user)?;
            services.organisation.set_account_kind(&user, kind).await?;
            println!("{}", serde_json::to_string(&services.portal.clearance_report(&user).await?)?);
        }
        OrgCommand::Managers { kind, slug, managers } => {
            let community = match kind.as_str() {
                "groups" => false,
                "communities" => true,
                _ => return Err(bad("groups or communities")),
            };
            let set = services.organisation.set_managers(community, &slug, &managers).await?;
            println!("{}", serde_json::json!({ "managers": set }));
        }
        OrgCommand::GroupCreate { slug, name, topic, classification, managers } => {
            let spec = GroupSpec { slug, name, topic, avatar_url: None, classification, managers };
            println!(
                "{}",
                serde_json::to_string(&services.organisation.create_group(&spec).await?).unwrap_or_default()
            );
        }
        OrgCommand::CommunityCreate { slug, name, manager, project, topic, tags, join, externals } => {
            let join = match join.as_str() {
                "open" => JoinRule::Open,
                "request" => JoinRule::Request,
                "invite" => JoinRule::Invite,
                _ => return Err(bad("join is open, request or invite")),
            };
            let spec = CommunitySpec {
                slug,
                name,
                topic,
                avatar_url: None,
                classification: None,
                manager,
                project,
                tags,
                join,
                externals,
                members: Vec::new(),
            };
            let created = services.organisation.create_community(None, &spec).await?;
            println!("{}", serde_json::to_string(&created).unwrap_or_default());
        }
    }
    services.db.close().await;
    Ok(())
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

async fn serve(
    services: std::sync::Arc<Services>,
    relay: Option<diplomatie_turn::relay::RelayConfig>,
) -> anyhow::Result<()> {
    let files = listener::raise_file_limit();
    let connections = listener::Connections::new(&services.config.http, files)?;
    let addr: SocketAddr =
        services.config.listen.parse().with_context(|| format!("invalid listen address {}", services.config.listen))?;
    let tcp = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    // The address bound (port 0 in the configuration: one the system chose), under a target
    // of its own so that a log filter can keep this line alone.
    let addr = tcp.local_addr().unwrap_or(addr);
    tracing::info!(target: "diplomatie::listening", server_name = %services.server_name(), %addr, open_files = files, "Diplomatie is listening");
    let relay = match relay {
        Some(config) => Some(diplomatie_turn::relay::Relay::start(config).await.map_err(|e| anyhow::anyhow!(e))?),
        None => None,
    };
    let app = diplomatie_api::router(services.clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let grace = std::time::Duration::from_secs(30);
    // The built-in HTTPS listener, for federation without a reverse proxy.
    let tls = if services.config.federation.tls_listen.is_empty() {
        None
    } else {
        let tls_addr: SocketAddr = services
            .config
            .federation
            .tls_listen
            .parse()
            .with_context(|| format!("invalid federation.tls_listen {}", services.config.federation.tls_listen))?;
        let config = diplomatie_service::federation::tls::server_config(&services.config)
            .map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
        let tls_tcp =
            tokio::net::TcpListener::bind(tls_addr).await.with_context(|| format!("cannot listen on {tls_addr}"))?;
        tracing::info!(addr = %tls_addr, "HTTPS listener");
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let serving =
            listener::serve(tls_tcp, Some(acceptor), app.clone(), connections.clone(), stopped.clone(), grace);
        Some(tokio::spawn(serving))
    };
    // Prometheus's listener, apart from the API's (plain HTTP: a private address).
    let metrics = if services.config.metrics.listen.is_empty() {
        None
    } else {
        let listen = &services.config.metrics.listen;
        let metrics_addr: SocketAddr = listen.parse().with_context(|| format!("invalid metrics.listen {listen}"))?;
        let metrics_tcp = tokio::net::TcpListener::bind(metrics_addr)
            .await
            .with_context(|| format!("cannot listen on {metrics_addr}"))?;
        tracing::info!(addr = %metrics_tcp.local_addr().unwrap_or(metrics_addr), "metrics listener");
        let router = diplomatie_api::metrics::router(services.clone());
        let serving = listener::serve(metrics_tcp, None, router, connections.clone(), stopped.clone(), grace);
        Some(tokio::spawn(serving))
    };
    listener::serve(tcp, None, app, connections, stopped, grace).await;
    if let Some(tls) = tls {
        let _ = tls.await;
    }
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    if let Some(relay) = relay {
        relay.close().await;
    }
    if let Err(e) = services.accounts.flush_last_seen().await {
        tracing::warn!(error = %e, "could not record when devices were last seen");
    }
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
