//! Retention policies, legal holds, and the purge's record.

use crate::{Connection, Exec, Result};

/// A room's lifetimes by kind of content (milliseconds; `None`: the server's default).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub messages_ms: Option<i64>,
    pub media_ms: Option<i64>,
    pub correspondence_ms: Option<i64>,
}

pub async fn policy<'e>(e: impl Exec<'e>, room_id: &str) -> Result<Option<Policy>> {
    let row: Option<(Option<i64>, Option<i64>, Option<i64>)> =
        sqlx::query_as("SELECT messages_ms, media_ms, correspondence_ms FROM retention_policies WHERE room_id = $1")
            .bind(room_id)
            .fetch_optional(e)
            .await?;
    Ok(row.map(|(messages_ms, media_ms, correspondence_ms)| Policy { messages_ms, media_ms, correspondence_ms }))
}

pub async fn set_policy<'e>(e: impl Exec<'e>, room_id: &str, p: &Policy, by: &str, ts: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO retention_policies (room_id, messages_ms, media_ms, correspondence_ms, set_by, set_ts) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (room_id) DO UPDATE SET messages_ms = $2, media_ms = $3, \
         correspondence_ms = $4, set_by = $5, set_ts = $6",
    )
    .bind(room_id)
    .bind(p.messages_ms)
    .bind(p.media_ms)
    .bind(p.correspondence_ms)
    .bind(by)
    .bind(ts)
    .execute(e)
    .await?;
    Ok(())
}

/// A legal hold, placed and perhaps released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub hold_id: String,
    pub scope: String,
    pub target: String,
    pub reason: String,
    pub placed_by: String,
    pub placed_ts: i64,
    pub released_by: Option<String>,
    pub released_ts: Option<i64>,
    pub release_reason: Option<String>,
}

type HoldRow = (String, String, String, String, String, i64, Option<String>, Option<i64>, Option<String>);

fn hold(r: HoldRow) -> Hold {
    Hold {
        hold_id: r.0,
        scope: r.1,
        target: r.2,
        reason: r.3,
        placed_by: r.4,
        placed_ts: r.5,
        released_by: r.6,
        released_ts: r.7,
        release_reason: r.8,
    }
}

const HOLD_COLUMNS: &str =
    "hold_id, scope, target, reason, placed_by, placed_ts, released_by, released_ts, release_reason";

/// Places a hold and records the rooms it covers (one transaction).
pub async fn place_hold(conn: &mut Connection, h: &Hold, rooms: &[String]) -> Result<()> {
    sqlx::query(&format!("INSERT INTO legal_holds ({HOLD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, NULL)"))
        .bind(&h.hold_id)
        .bind(&h.scope)
        .bind(&h.target)
        .bind(&h.reason)
        .bind(&h.placed_by)
        .bind(h.placed_ts)
        .execute(&mut *conn)
        .await?;
    for room in rooms {
        sqlx::query("INSERT INTO legal_hold_rooms (hold_id, room_id) VALUES ($1, $2)")
            .bind(&h.hold_id)
            .bind(room)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Releases a hold still in force; false when there is none by that id.
pub async fn release_hold<'e>(e: impl Exec<'e>, hold_id: &str, by: &str, ts: i64, reason: &str) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE legal_holds SET released_by = $2, released_ts = $3, release_reason = $4 \
         WHERE hold_id = $1 AND released_ts IS NULL",
    )
    .bind(hold_id)
    .bind(by)
    .bind(ts)
    .bind(reason)
    .execute(e)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Every hold, in force or released, oldest first.
pub async fn holds<'e>(e: impl Exec<'e>) -> Result<Vec<Hold>> {
    let rows: Vec<HoldRow> =
        sqlx::query_as(&format!("SELECT {HOLD_COLUMNS} FROM legal_holds ORDER BY placed_ts, hold_id"))
            .fetch_all(e)
            .await?;
    Ok(rows.into_iter().map(hold).collect())
}

pub async fn get_hold<'e>(e: impl Exec<'e>, hold_id: &str) -> Result<Option<Hold>> {
    let row: Option<HoldRow> = sqlx::query_as(&format!("SELECT {HOLD_COLUMNS} FROM legal_holds WHERE hold_id = $1"))
        .bind(hold_id)
        .fetch_optional(e)
        .await?;
    Ok(row.map(hold))
}

/// The rooms held now (by a room or group hold in force).
pub async fn held_rooms<'e>(e: impl Exec<'e>) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT r.room_id FROM legal_hold_rooms r JOIN legal_holds h ON h.hold_id = r.hold_id \
         WHERE h.released_ts IS NULL",
    )
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(|(r,)| r).collect())
}

/// The users held now.
pub async fn held_users<'e>(e: impl Exec<'e>) -> Result<Vec<String>> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT DISTINCT target FROM legal_holds WHERE scope = 'user' AND released_ts IS NULL")
            .fetch_all(e)
            .await?;
    Ok(rows.into_iter().map(|(u,)| u).collect())
}

/// Whether `user_id` is under a hold in force.
pub async fn user_held<'e>(e: impl Exec<'e>, user_id: &str) -> Result<bool> {
    let row: Option<(i64,)> = sqlx::query_as(
        "SELECT 1 FROM legal_holds WHERE scope = 'user' AND target = $1 AND released_ts IS NULL LIMIT 1",
    )
    .bind(user_id)
    .fetch_optional(e)
    .await?;
    Ok(row.is_some())
}

/// Before an event is redacted: keeps its original when its room or its sender is held.
pub async fn keep_original_if_held(conn: &mut Connection, event_id: &str, redacted_by: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO held_originals (event_id, room_id, json, redacted_by) \
         SELECT e.event_id, e.room_id, e.json, $2 FROM events e WHERE e.event_id = $1 AND e.redacted_by IS NULL AND (\
           EXISTS (SELECT 1 FROM legal_hold_rooms r JOIN legal_holds h ON h.hold_id = r.hold_id \
                   WHERE h.released_ts IS NULL AND r.room_id = e.room_id) \
           OR EXISTS (SELECT 1 FROM legal_holds h WHERE h.released_ts IS NULL AND h.scope = 'user' \
                      AND h.target = e.sender)) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(redacted_by)
    .execute(conn)
    .await?;
    Ok(())
}

/// The original of a held event that was redacted.
pub async fn held_original<'e>(e: impl Exec<'e>, event_id: &str) -> Result<Option<String>> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT json FROM held_originals WHERE event_id = $1").bind(event_id).fetch_optional(e).await?;
    Ok(row.map(|(j,)| j))
}

/// An event the purge may empty: not state, not redacted, not purged yet.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub stream_ordering: i64,
    pub event_id: String,
    pub room_id: String,
    pub sender: String,
    pub origin_server_ts: i64,
    pub state_group: i64,
    pub json: String,
}

/// A room's candidates sent before `before_ts`, after stream position `after`, in stream order.
pub async fn candidates<'e>(
    e: impl Exec<'e>,
    room_id: &str,
    before_ts: i64,
    after: i64,
    limit: i64,
) -> Result<Vec<Candidate>> {
    let rows: Vec<(i64, String, String, String, i64, i64, String)> = sqlx::query_as(
        "SELECT e.stream_ordering, e.event_id, e.room_id, e.sender, e.origin_server_ts, e.state_group, e.json \
         FROM events e WHERE e.room_id = $1 AND e.state_key IS NULL AND e.redacted_by IS NULL \
         AND e.origin_server_ts < $2 AND e.stream_ordering > $3 \
         AND NOT EXISTS (SELECT 1 FROM purged_events p WHERE p.event_id = e.event_id) \
         ORDER BY e.stream_ordering LIMIT $4",
    )
    .bind(room_id)
    .bind(before_ts)
    .bind(after)
    .bind(limit)
    .fetch_all(e)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Candidate {
            stream_ordering: r.0,
            event_id: r.1,
            room_id: r.2,
            sender: r.3,
            origin_server_ts: r.4,
            state_group: r.5,
            json: r.6,
        })
        .collect())
}

/// Every room this server holds.
pub async fn all_rooms<'e>(e: impl Exec<'e>) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT room_id FROM rooms ORDER BY room_id").fetch_all(e).await?;
    Ok(rows.into_iter().map(|(r,)| r).collect())
}

/// An event emptied by a purge.
pub struct Purged<'a> {
    pub event_id: &'a str,
    pub room_id: &'a str,
    pub kind: &'a str,
    pub origin_server_ts: i64,
    /// What is left of it (the redaction algorithm's form).
    pub json: &'a str,
}

/// Empties an event and records it, in the purge's transaction.
pub async fn purge_event(conn: &mut Connection, run_id: &str, p: &Purged<'_>) -> Result<()> {
    sqlx::query("UPDATE events SET json = $2 WHERE event_id = $1")
        .bind(p.event_id)
        .bind(p.json)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO purged_events (event_id, room_id, run_id, kind, origin_server_ts, search_cleared) \
         VALUES ($1, $2, $3, $4, $5, 0)",
    )
    .bind(p.event_id)
    .bind(p.room_id)
    .bind(run_id)
    .bind(p.kind)
    .bind(p.origin_server_ts)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Deletes a local media's row and its thumbnails' rows; answers the files they used.
pub async fn delete_media(conn: &mut Connection, origin: &str, media_id: &str) -> Result<Vec<String>> {
    let mut files: Vec<String> =
        sqlx::query_as::<_, (Option<String>,)>("SELECT sha256 FROM media WHERE origin = $1 AND media_id = $2")
            .bind(origin)
            .bind(media_id)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .filter_map(|(s,)| s)
            .collect();
    let thumbnails: Vec<(String,)> =
        sqlx::query_as("SELECT sha256 FROM media_thumbnails WHERE origin = $1 AND media_id = $2")
            .bind(origin)
            .bind(media_id)
            .fetch_all(&mut *conn)
            .await?;
    files.extend(thumbnails.into_iter().map(|(s,)| s));
    for table in ["media", "media_thumbnails"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE origin = $1 AND media_id = $2"))
            .bind(origin)
            .bind(media_id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(files)
}

/// Whether a stored file is still used by a media or a thumbnail.
pub async fn file_in_use<'e>(e: impl Exec<'e>, sha256: &str) -> Result<bool> {
    let row: Option<(i64,)> = sqlx::query_as(
        "SELECT 1 FROM media WHERE sha256 = $1 UNION ALL SELECT 1 FROM media_thumbnails WHERE sha256 = $1 LIMIT 1",
    )
    .bind(sha256)
    .fetch_optional(e)
    .await?;
    Ok(row.is_some())
}

/// Deletes a correspondence's record and what refers to it (its deliveries, action items,
/// reservation), when its retention has passed.
pub async fn delete_record(conn: &mut Connection, reference: &str) -> Result<bool> {
    let done =
        sqlx::query("DELETE FROM correspondence WHERE reference = $1").bind(reference).execute(&mut *conn).await?;
    for table in ["correspondence_deliveries", "correspondence_actions", "correspondence_references"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE reference = $1")).bind(reference).execute(&mut *conn).await?;
    }
    Ok(done.rows_affected() > 0)
}

/// What one purge did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Run {
    pub run_id: String,
    pub started_ts: i64,
    pub finished_ts: Option<i64>,
    pub events: i64,
    pub media: i64,
    pub records: i64,
    pub kept_on_hold: i64,
}

pub async fn start_run<'e>(e: impl Exec<'e>, run_id: &str, ts: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO purge_runs (run_id, started_ts, finished_ts, events, media, records, kept_on_hold) \
         VALUES ($1, $2, NULL, 0, 0, 0, 0)",
    )
    .bind(run_id)
    .bind(ts)
    .execute(e)
    .await?;
    Ok(())
}

/// Adds a batch's counts to its run (in the batch's transaction).
pub async fn count_run(
    conn: &mut Connection,
    run_id: &str,
    events: i64,
    media: i64,
    records: i64,
    kept: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE purge_runs SET events = events + $2, media = media + $3, records = records + $4, \
         kept_on_hold = kept_on_hold + $5 WHERE run_id = $1",
    )
    .bind(run_id)
    .bind(events)
    .bind(media)
    .bind(records)
    .bind(kept)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn finish_run<'e>(e: impl Exec<'e>, run_id: &str, ts: i64) -> Result<()> {
    sqlx::query("UPDATE purge_runs SET finished_ts = $2 WHERE run_id = $1").bind(run_id).bind(ts).execute(e).await?;
    Ok(())
}

type RunRow = (String, i64, Option<i64>, i64, i64, i64, i64);

/// The newest runs first.
pub async fn runs<'e>(e: impl Exec<'e>, limit: i64) -> Result<Vec<Run>> {
    let rows: Vec<RunRow> = sqlx::query_as(
        "SELECT run_id, started_ts, finished_ts, events, media, records, kept_on_hold FROM purge_runs \
         ORDER BY started_ts DESC, run_id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(e)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Run {
            run_id: r.0,
            started_ts: r.1,
            finished_ts: r.2,
            events: r.3,
            media: r.4,
            records: r.5,
            kept_on_hold: r.6,
        })
        .collect())
}

/// Purged events the search index may still hold.
pub async fn search_not_cleared<'e>(e: impl Exec<'e>, limit: i64) -> Result<Vec<String>> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT event_id FROM purged_events WHERE search_cleared = 0 ORDER BY event_id LIMIT $1")
            .bind(limit)
            .fetch_all(e)
            .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

pub async fn mark_search_cleared(conn: &mut Connection, event_ids: &[String]) -> Result<()> {
    for id in event_ids {
        sqlx::query("UPDATE purged_events SET search_cleared = 1 WHERE event_id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
