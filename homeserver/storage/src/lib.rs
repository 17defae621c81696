//! The database layer of Diplomatie.
//!
//! One interface over two backends: SQLite (embedded, the default, zero set-up) and PostgreSQL
//! (for deployments that outgrow one machine). Both are reached through sqlx's `Any` driver, and
//! every query in this crate is written in the SQL both dialects share (`$n` placeholders,
//! `ON CONFLICT`, `RETURNING`), so there is exactly one implementation of each query.
//!
//! This crate knows nothing of Matrix: it stores and returns strings, integers and JSON text.
//! Meaning is given by `diplomatie-service`, the only crate that calls it.

pub mod accounts;
pub mod admin;
pub mod appservices;
pub mod circuits;
pub mod correspondence;
pub mod crisis;
pub mod delayed;
pub mod deletions;
pub mod e2ee;
pub mod events;
pub mod federation;
pub mod media;
pub mod mls;
pub mod org;
pub mod push;
pub mod remote_devices;
pub mod reports;
pub mod retention;
pub mod rooms;
pub mod state;
pub mod stats;
pub mod streams;
pub mod threepids;

use std::{borrow::Cow, str::FromStr, time::Duration};

use sqlx::{
    any::{AnyConnectOptions, AnyPoolOptions},
    migrate::{Migration, MigrationSource, MigrationType, Migrator},
    Any, AnyPool, Executor,
};

pub use sqlx::{AnyConnection as Connection, Transaction};

/// A failure of the database. The service layer logs it and answers `M_UNKNOWN`.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct StorageError(#[from] sqlx::Error);

impl StorageError {
    /// Whether the failure is a violated uniqueness constraint (the row already exists).
    pub fn is_unique_violation(&self) -> bool {
        self.0.as_database_error().is_some_and(|e| e.is_unique_violation())
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Anything a query can run on: the pool, a connection or an open transaction.
pub trait Exec<'e>: Executor<'e, Database = Any> {}
impl<'e, T: Executor<'e, Database = Any>> Exec<'e> for T {}

/// Which database engine is behind the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A handle on the database: cheap to clone, shared by every service.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
}

/// The migrations, embedded in the binary so that a fresh data directory needs nothing else.
/// Their SQL is portable; a migration that needs dialect-specific SQL would be split in two.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "core", include_str!("../migrations/0001_core.sql")),
    (2, "e2ee", include_str!("../migrations/0002_e2ee.sql")),
    (3, "cross_signing_backup", include_str!("../migrations/0003_cross_signing_backup.sql")),
    (4, "dehydrated_devices", include_str!("../migrations/0004_dehydrated_devices.sql")),
    (5, "media", include_str!("../migrations/0005_media.sql")),
    (6, "push", include_str!("../migrations/0006_push.sql")),
    (7, "portal", include_str!("../migrations/0007_portal.sql")),
    (8, "push_defaults", include_str!("../migrations/0008_push_defaults.sql")),
    (9, "correspondence", include_str!("../migrations/0009_correspondence.sql")),
    (10, "federation", include_str!("../migrations/0010_federation.sql")),
    (11, "signature_changes", include_str!("../migrations/0011_signature_changes.sql")),
    (12, "conformance", include_str!("../migrations/0012_conformance.sql")),
    (13, "appservices", include_str!("../migrations/0013_appservices.sql")),
    (14, "erasure", include_str!("../migrations/0014_erasure.sql")),
    (15, "mls", include_str!("../migrations/0015_mls.sql")),
    (16, "mls_group_info", include_str!("../migrations/0016_mls_group_info.sql")),
    (17, "mls_revocations", include_str!("../migrations/0017_mls_revocations.sql")),
    (18, "delayed_events", include_str!("../migrations/0018_delayed_events.sql")),
    (19, "crisis", include_str!("../migrations/0019_crisis.sql")),
    (20, "retention", include_str!("../migrations/0020_retention.sql")),
    (21, "circuits", include_str!("../migrations/0021_circuits.sql")),
    (22, "remote_devices", include_str!("../migrations/0022_remote_devices.sql")),
    (23, "admin", include_str!("../migrations/0023_admin.sql")),
    (24, "admin_rooms_limits", include_str!("../migrations/0024_admin_rooms_limits.sql")),
    (25, "peeks", include_str!("../migrations/0025_peeks.sql")),
    (26, "threepid_validation", include_str!("../migrations/0026_threepid_validation.sql")),
];

#[derive(Debug)]
struct Embedded;

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> futures_core::future::BoxFuture<'static, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(description),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

impl Db {
    /// Connects to `url` (`sqlite://path` or `postgres://...`), configures the connection and
    /// applies pending migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") { Backend::Sqlite } else { Backend::Postgres };
        let options = AnyConnectOptions::from_str(url)?;
        let pool = AnyPoolOptions::new()
            // SQLite allows one writer at a time; readers run beside it thanks to WAL.
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL: readers never block the writer. synchronous=NORMAL is durable
                        // against a crash of the process (the guarantee a 200 on send gives);
                        // only a power cut may lose the last commits.
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = OFF; \
                             PRAGMA cache_size = -4096; PRAGMA temp_store = MEMORY; \
                             PRAGMA wal_autocheckpoint = 10000;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        let db = Db { pool, backend };
        let migrator = Migrator::new(Embedded).await.map_err(sqlx::Error::from)?;
        migrator.run(&db.pool).await.map_err(sqlx::Error::from)?;
        Ok(db)
    }

    /// SQLite: copies the write-ahead log into the database once a second, in the background,
    /// so that commits seldom do it themselves (connections checkpoint automatically only past
    /// 10,000 pages, a bound on the log should this task fall behind). Stops when the pool
    /// closes.
    pub fn spawn_checkpointer(&self) {
        if self.backend != Backend::Sqlite {
            return;
        }
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if pool.is_closed() {
                    return;
                }
                if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
                    tracing::warn!(error = %e, "WAL checkpoint failed");
                }
            }
        });
    }

    /// A connection of the pool, for queries whose SQL depends on the backend.
    pub async fn acquire(&self) -> Result<sqlx::pool::PoolConnection<Any>> {
        Ok(self.pool.acquire().await?)
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Opens a transaction: everything written through it lands together or not at all.
    pub async fn begin(&self) -> Result<Transaction<'static, Any>> {
        Ok(self.pool.begin().await?)
    }

    /// Opens a transaction that reads before it writes. SQLite takes its write lock at once
    /// (`BEGIN IMMEDIATE`, waiting its busy timeout for it): a deferred transaction that read
    /// first would fail (`SQLITE_BUSY_SNAPSHOT`) when another writer commits in between.
    pub async fn begin_write(&self) -> Result<Transaction<'static, Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Reads a named counter (0 when never set).
pub async fn counter<'e>(e: impl Exec<'e>, name: &str) -> Result<i64> {
    let v: Option<(i64,)> =
        sqlx::query_as("SELECT value FROM counters WHERE name = $1").bind(name).fetch_optional(e).await?;
    Ok(v.map(|(v,)| v).unwrap_or(0))
}

/// Sets a named counter.
pub async fn set_counter<'e>(e: impl Exec<'e>, name: &str, value: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO counters (name, value) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )
    .bind(name)
    .bind(value)
    .execute(e)
    .await?;
    Ok(())
}

/// Converts a stored 0/1 flag.
pub(crate) fn flag(v: i64) -> bool {
    v != 0
}

/// Row counts of the statements multi-row inserts are split into: a handful of distinct
/// statements per table, so each stays prepared in the connection's cache.
const ROW_CHUNKS: [usize; 8] = [128, 64, 32, 16, 8, 4, 2, 1];

/// Splits rows into chunks whose sizes come from [`ROW_CHUNKS`].
fn row_chunks<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let size = ROW_CHUNKS.iter().copied().find(|s| *s <= rows.len())?;
        let (head, tail) = rows.split_at(size);
        rows = tail;
        Some(head)
    })
}

/// `head` followed by `rows` tuples of `columns` placeholders. SQLite gets anonymous `?`
/// placeholders: it looks each named or numbered one (`$n`, `?n`) up by a linear search, both
/// when parsing and when binding, which made statements of hundreds of parameters cost their
/// square. PostgreSQL gets `$n`.
fn values_sql(conn: &Connection, head: &str, columns: usize, rows: usize) -> String {
    let sqlite = conn.backend_name().eq_ignore_ascii_case("sqlite");
    let mut sql = String::with_capacity(head.len() + rows * columns * 5);
    sql.push_str(head);
    sql.push_str(" VALUES ");
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..columns {
            if c > 0 {
                sql.push_str(", ");
            }
            if sqlite {
                sql.push('?');
            } else {
                sql.push_str(&format!("${}", r * columns + c + 1));
            }
        }
        sql.push(')');
    }
    sql
}

/// A query whose parameters are still being bound.
pub(crate) type AnyQuery<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>;

/// Inserts many rows in few statements (`head` is `INSERT INTO t (columns...)`); `bind` binds
/// one row's `columns` values, in order.
pub(crate) async fn insert_rows<T>(
    conn: &mut Connection,
    head: &str,
    columns: usize,
    rows: &[T],
    bind: impl for<'q> Fn(AnyQuery<'q>, &'q T) -> AnyQuery<'q>,
) -> Result<()> {
    insert_rows_with_tail(conn, head, columns, rows, "", bind).await
}

/// [`insert_rows`] with a clause after the values (`ON CONFLICT ...`).
pub(crate) async fn insert_rows_with_tail<T>(
    conn: &mut Connection,
    head: &str,
    columns: usize,
    rows: &[T],
    tail: &str,
    bind: impl for<'q> Fn(AnyQuery<'q>, &'q T) -> AnyQuery<'q>,
) -> Result<()> {
    for chunk in row_chunks(rows) {
        let mut sql = values_sql(conn, head, columns, chunk.len());
        sql.push_str(tail);
        let q = chunk.iter().fold(sqlx::query(&sql), &bind);
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Commits a transaction opened with [`Db::begin`].
pub async fn commit(tx: Transaction<'static, Any>) -> Result<()> {
    Ok(tx.commit().await?)
}

/// An open transaction on the database.
pub type Tx = Transaction<'static, Any>;
