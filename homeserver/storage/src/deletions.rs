//! Room deletions: their record (where each stands, what it did), and the purge that removes
//! every row this server holds of a room.

use crate::{flag, Connection, Exec, Result};

/// A deletion as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deletion {
    pub delete_id: String,
    pub room_id: String,
    pub admin: String,
    /// `shutting_down`, `purging`, `complete` or `failed`.
    pub status: String,
    pub block: bool,
    pub purge: bool,
    pub force_purge: bool,
    pub error: Option<String>,
    pub kicked_users: Vec<String>,
    pub failed_to_kick_users: Vec<String>,
    pub local_aliases: Vec<String>,
    pub started_ts: i64,
    pub finished_ts: Option<i64>,
}

type Row = (String, String, String, String, i64, i64, i64, Option<String>, String, String, String, i64, Option<i64>);

const COLUMNS: &str = "delete_id, room_id, admin, status, block, purge, force_purge, error, kicked_users, \
     failed_to_kick_users, local_aliases, started_ts, finished_ts";

fn list(json: &str) -> Vec<String> {
    serde_json::from_str(json).unwrap_or_default()
}

fn deletion(r: Row) -> Deletion {
    Deletion {
        delete_id: r.0,
        room_id: r.1,
        admin: r.2,
        status: r.3,
        block: flag(r.4),
        purge: flag(r.5),
        force_purge: flag(r.6),
        error: r.7,
        kicked_users: list(&r.8),
        failed_to_kick_users: list(&r.9),
        local_aliases: list(&r.10),
        started_ts: r.11,
        finished_ts: r.12,
    }
}

fn json(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".to_owned())
}

pub async fn insert<'e>(e: impl Exec<'e>, d: &Deletion) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO room_deletions ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    ))
    .bind(&d.delete_id)
    .bind(&d.room_id)
    .bind(&d.admin)
    .bind(&d.status)
    .bind(d.block as i64)
    .bind(d.purge as i64)
    .bind(d.force_purge as i64)
    .bind(&d.error)
    .bind(json(&d.kicked_users))
    .bind(json(&d.failed_to_kick_users))
    .bind(json(&d.local_aliases))
    .bind(d.started_ts)
    .bind(d.finished_ts)
    .execute(e)
    .await?;
    Ok(())
}

/// Writes what a deletion did so far and where it stands.
pub async fn update<'e>(e: impl Exec<'e>, d: &Deletion) -> Result<()> {
    sqlx::query(
        "UPDATE room_deletions SET status = $2, error = $3, kicked_users = $4, failed_to_kick_users = $5, \
         local_aliases = $6, finished_ts = $7 WHERE delete_id = $1",
    )
    .bind(&d.delete_id)
    .bind(&d.status)
    .bind(&d.error)
    .bind(json(&d.kicked_users))
    .bind(json(&d.failed_to_kick_users))
    .bind(json(&d.local_aliases))
    .bind(d.finished_ts)
    .execute(e)
    .await?;
    Ok(())
}

pub async fn get<'e>(e: impl Exec<'e>, delete_id: &str) -> Result<Option<Deletion>> {
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM room_deletions WHERE delete_id = $1"))
        .bind(delete_id)
        .fetch_optional(e)
        .await?;
    Ok(row.map(deletion))
}

/// A room's deletions, the newest first.
pub async fn of_room<'e>(e: impl Exec<'e>, room_id: &str) -> Result<Vec<Deletion>> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM room_deletions WHERE room_id = $1 ORDER BY started_ts DESC, delete_id"
    ))
    .bind(room_id)
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(deletion).collect())
}

/// Deletions not finished (a stop came in between), the oldest first.
pub async fn unfinished<'e>(e: impl Exec<'e>) -> Result<Vec<Deletion>> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM room_deletions WHERE status IN ('shutting_down', 'purging') ORDER BY started_ts"
    ))
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(deletion).collect())
}

/// The room's members of this server: those whose membership is `join`, `invite` or `knock`
/// (`in_room`), or all who have one.
pub async fn local_members<'e>(
    e: impl Exec<'e>,
    room_id: &str,
    server_name: &str,
    in_room: bool,
) -> Result<Vec<String>> {
    let suffix = format!("%:{}", crate::accounts::like_escaped(server_name));
    let which = if in_room { "AND membership IN ('join', 'invite', 'knock')" } else { "" };
    let rows: Vec<(String,)> = sqlx::query_as(&format!(
        "SELECT state_key FROM current_state WHERE room_id = $1 AND event_type = 'm.room.member' {which} \
         AND state_key LIKE $2 ESCAPE '\\' ORDER BY state_key"
    ))
    .bind(room_id)
    .bind(suffix)
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(|(u,)| u).collect())
}

/// Whether a legal hold keeps the room: the room itself is held, or a held account sent
/// one of its events.
pub async fn held<'e>(e: impl Exec<'e>, room_id: &str) -> Result<bool> {
    let row: Option<(i64,)> = sqlx::query_as(
        "SELECT 1 FROM legal_hold_rooms r JOIN legal_holds h ON h.hold_id = r.hold_id \
         WHERE r.room_id = $1 AND h.released_ts IS NULL \
         UNION ALL SELECT 1 FROM legal_holds h WHERE h.scope = 'user' AND h.released_ts IS NULL \
         AND EXISTS (SELECT 1 FROM events e WHERE e.room_id = $1 AND e.sender = h.target) LIMIT 1",
    )
    .bind(room_id)
    .fetch_optional(e)
    .await?;
    Ok(row.is_some())
}

/// The tables whose rows of a room go with it, by their `room_id` column. What stays: the
/// formal correspondence's records and deliveries, the crisis cells' logs and the signature
/// circuits (records of the organisation, archived on their own terms), the key backups
/// (their owners'), reports, media, and the room's block.
const ROOM_TABLES: [&str; 20] = [
    "forward_extremities",
    "current_state",
    "room_forgotten",
    "room_peeks",
    "room_aliases",
    "account_data",
    "receipts",
    "event_push_actions",
    "event_push_defaults",
    "correspondence_drafts",
    "journals",
    "outliers",
    "appservice_room_list",
    "mls_groups",
    "mls_handshakes",
    "mls_revocations",
    "delayed_events",
    "retention_policies",
    "state_groups",
    "events",
];

/// Removes every row this server holds of a room (see [`ROOM_TABLES`]), in the caller's
/// transaction. Its events are recorded as purged (`kind` `room`, under `run_id`) so that the
/// search index forgets them; answers how many events went.
pub async fn purge_room(conn: &mut Connection, room_id: &str, run_id: &str) -> Result<u64> {
    sqlx::query(
        "INSERT INTO purged_events (event_id, room_id, run_id, kind, origin_server_ts, search_cleared) \
         SELECT e.event_id, e.room_id, $2, 'room', e.origin_server_ts, 0 FROM events e WHERE e.room_id = $1 \
         AND NOT EXISTS (SELECT 1 FROM purged_events p WHERE p.event_id = e.event_id)",
    )
    .bind(room_id)
    .bind(run_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM event_txns WHERE event_id IN (SELECT event_id FROM events WHERE room_id = $1)")
        .bind(room_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "DELETE FROM state_group_entries WHERE state_group IN (SELECT id FROM state_groups WHERE room_id = $1)",
    )
    .bind(room_id)
    .execute(&mut *conn)
    .await?;
    let mut events = 0;
    for table in ROOM_TABLES {
        let done =
            sqlx::query(&format!("DELETE FROM {table} WHERE room_id = $1")).bind(room_id).execute(&mut *conn).await?;
        if table == "events" {
            events = done.rows_affected();
        }
    }
    sqlx::query("DELETE FROM rooms WHERE room_id = $1").bind(room_id).execute(&mut *conn).await?;
    Ok(events)
}
