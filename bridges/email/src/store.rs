//! The bridge's own database (SQLite by default, PostgreSQL): which room each address leads
//! to, the Message-IDs of every mail it carried and the events they became (so that threads
//! survive restarts), the puppets it made, and the homeserver transactions already handled.

use std::time::Duration;

use sqlx::{any::AnyPoolOptions, AnyPool, Executor};

pub struct Store {
    pool: AnyPool,
}

/// One mail the bridge carried, in or out, and the event it is.
#[derive(Clone, Debug)]
pub struct Mail {
    pub message_id: String,
    pub room_id: String,
    pub event_id: String,
    /// The thread's first event (itself when it starts one).
    pub thread_root: String,
    /// Whom a reply goes to: the sender's address (its `Reply-To` first), or for outbound
    /// mail the recipients, comma-separated.
    pub peer: String,
    /// The `References` of this mail, space-separated, itself excluded.
    pub refs: String,
    /// Its subject (a reply's is `Re:` the thread's).
    pub subject: String,
}

/// A bridged room.
#[derive(Clone, Debug)]
pub struct Room {
    pub room_id: String,
    pub address: Option<String>,
    /// Addresses every new message of the room goes to, comma-separated.
    pub recipients: String,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS rooms (room_id TEXT PRIMARY KEY, address TEXT UNIQUE, \
     recipients TEXT NOT NULL DEFAULT '')",
    "CREATE TABLE IF NOT EXISTS mails (message_id TEXT NOT NULL, room_id TEXT NOT NULL, \
     event_id TEXT NOT NULL, thread_root TEXT NOT NULL, peer TEXT NOT NULL, refs TEXT NOT NULL, \
     subject TEXT NOT NULL, created_ms BIGINT NOT NULL, PRIMARY KEY (message_id, room_id))",
    "CREATE UNIQUE INDEX IF NOT EXISTS mails_event ON mails (event_id)",
    "CREATE TABLE IF NOT EXISTS puppets (user_id TEXT PRIMARY KEY, display_name TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS puppet_rooms (user_id TEXT NOT NULL, room_id TEXT NOT NULL, \
     PRIMARY KEY (user_id, room_id))",
    "CREATE TABLE IF NOT EXISTS transactions (txn_id TEXT PRIMARY KEY, done_ms BIGINT NOT NULL)",
];

type MailRow = (String, String, String, String, String, String, String);

fn mail(row: MailRow) -> Mail {
    let (message_id, room_id, event_id, thread_root, peer, refs, subject) = row;
    Mail { message_id, room_id, event_id, thread_root, peer, refs, subject }
}

fn room((room_id, address, recipients): (String, Option<String>, String)) -> Room {
    Room { room_id, address, recipients }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Store {
    pub async fn connect(url: &str) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 4 } else { 8 })
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&pool).await?;
        }
        Ok(Store { pool })
    }

    pub async fn room(&self, room_id: &str) -> anyhow::Result<Option<Room>> {
        let row = sqlx::query_as("SELECT room_id, address, recipients FROM rooms WHERE room_id = $1")
            .bind(room_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(room))
    }

    pub async fn room_by_address(&self, address: &str) -> anyhow::Result<Option<Room>> {
        let row = sqlx::query_as("SELECT room_id, address, recipients FROM rooms WHERE address = $1")
            .bind(address)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(room))
    }

    /// Marks `room_id` bridged (it keeps its address and recipients if it was).
    pub async fn add_room(&self, room_id: &str) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO rooms (room_id, recipients) VALUES ($1, '') ON CONFLICT (room_id) DO NOTHING")
            .bind(room_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn remove_room(&self, room_id: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM rooms WHERE room_id = $1").bind(room_id).execute(&self.pool).await?;
        sqlx::query("DELETE FROM puppet_rooms WHERE room_id = $1").bind(room_id).execute(&self.pool).await?;
        Ok(())
    }

    /// Gives `room_id` the address `address`; false when another room has it.
    pub async fn set_address(&self, room_id: &str, address: &str) -> anyhow::Result<bool> {
        if let Some(other) = self.room_by_address(address).await? {
            return Ok(other.room_id == room_id);
        }
        let done = sqlx::query("UPDATE rooms SET address = $1 WHERE room_id = $2")
            .bind(address)
            .bind(room_id)
            .execute(&self.pool)
            .await;
        match done {
            Ok(r) => Ok(r.rows_affected() == 1),
            // Taken in between by another room.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn set_recipients(&self, room_id: &str, recipients: &str) -> anyhow::Result<()> {
        sqlx::query("UPDATE rooms SET recipients = $1 WHERE room_id = $2")
            .bind(recipients)
            .bind(room_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn mail(&self, message_id: &str, room_id: &str) -> anyhow::Result<Option<Mail>> {
        let row: Option<MailRow> = sqlx::query_as(
            "SELECT message_id, room_id, event_id, thread_root, peer, refs, subject FROM mails \
             WHERE message_id = $1 AND room_id = $2",
        )
        .bind(message_id)
        .bind(room_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(mail))
    }

    pub async fn mail_of_event(&self, event_id: &str) -> anyhow::Result<Option<Mail>> {
        let row: Option<MailRow> = sqlx::query_as(
            "SELECT message_id, room_id, event_id, thread_root, peer, refs, subject FROM mails WHERE event_id = $1",
        )
        .bind(event_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(mail))
    }

    /// Records a mail and its event; a second record of the same pair changes nothing.
    pub async fn add_mail(&self, m: &Mail) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO mails (message_id, room_id, event_id, thread_root, peer, refs, subject, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(&m.message_id)
        .bind(&m.room_id)
        .bind(&m.event_id)
        .bind(&m.thread_root)
        .bind(&m.peer)
        .bind(&m.refs)
        .bind(&m.subject)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn puppet(&self, user_id: &str) -> anyhow::Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as("SELECT display_name FROM puppets WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.0))
    }

    pub async fn set_puppet(&self, user_id: &str, display_name: &str) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO puppets (user_id, display_name) VALUES ($1, $2) \
             ON CONFLICT (user_id) DO UPDATE SET display_name = excluded.display_name",
        )
        .bind(user_id)
        .bind(display_name)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn puppet_in(&self, user_id: &str, room_id: &str) -> anyhow::Result<bool> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT user_id FROM puppet_rooms WHERE user_id = $1 AND room_id = $2")
                .bind(user_id)
                .bind(room_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some())
    }

    pub async fn forget_puppet_in(&self, user_id: &str, room_id: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM puppet_rooms WHERE user_id = $1 AND room_id = $2")
            .bind(user_id)
            .bind(room_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_puppet_in(&self, user_id: &str, room_id: &str) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO puppet_rooms (user_id, room_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(user_id)
            .bind(room_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn transaction_done(&self, txn_id: &str) -> anyhow::Result<bool> {
        let row: Option<(String,)> = sqlx::query_as("SELECT txn_id FROM transactions WHERE txn_id = $1")
            .bind(txn_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    pub async fn set_transaction_done(&self, txn_id: &str) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO transactions (txn_id, done_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(txn_id)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
