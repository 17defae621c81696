//! Events (PDUs), forward extremities, transaction ids and relations.

use crate::{Connection, Exec, Result};

/// An event as stored: the PDU's JSON plus what the server derived when it accepted it.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    pub stream_ordering: i64,
    pub event_id: String,
    pub room_id: String,
    pub state_group: i64,
    pub redacted_by: Option<String>,
    pub json: String,
}

type EventRow = (i64, String, String, i64, Option<String>, String);

fn from_row(r: EventRow) -> StoredEvent {
    StoredEvent { stream_ordering: r.0, event_id: r.1, room_id: r.2, state_group: r.3, redacted_by: r.4, json: r.5 }
}

const COLUMNS: &str = "stream_ordering, event_id, room_id, state_group, redacted_by, json";

/// What the writer records for a new event.
pub struct NewEvent<'a> {
    pub stream_ordering: i64,
    pub event_id: &'a str,
    pub room_id: &'a str,
    pub sender: &'a str,
    pub event_type: &'a str,
    pub state_key: Option<&'a str>,
    pub depth: i64,
    pub origin_server_ts: i64,
    pub state_group: i64,
    pub rel_type: Option<&'a str>,
    pub relates_to: Option<&'a str>,
    pub json: &'a str,
}

/// Inserts many events in one statement (fewer round trips to the database under load).
pub async fn insert_events(conn: &mut Connection, events: &[NewEvent<'_>]) -> Result<()> {
    let head = "INSERT INTO events (stream_ordering, event_id, room_id, sender, event_type, state_key, depth, \
         origin_server_ts, state_group, rel_type, relates_to, json)";
    crate::insert_rows(conn, head, 12, events, |q, ev| {
        q.bind(ev.stream_ordering)
            .bind(ev.event_id)
            .bind(ev.room_id)
            .bind(ev.sender)
            .bind(ev.event_type)
            .bind(ev.state_key)
            .bind(ev.depth)
            .bind(ev.origin_server_ts)
            .bind(ev.state_group)
            .bind(ev.rel_type)
            .bind(ev.relates_to)
            .bind(ev.json)
    })
    .await
}

/// Records many (user, device, txn id, event id) transaction ids in one statement.
pub async fn insert_txns(conn: &mut Connection, txns: &[(&str, &str, &str, &str)]) -> Result<()> {
    let head = "INSERT INTO event_txns (user_id, device_id, txn_id, event_id)";
    crate::insert_rows(conn, head, 4, txns, |q, (user, device, txn, event)| {
        q.bind(*user).bind(*device).bind(*txn).bind(*event)
    })
    .await
}

pub async fn get_event<'e>(e: impl Exec<'e>, event_id: &str) -> Result<Option<StoredEvent>> {
    let row: Option<EventRow> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM events WHERE event_id = $1"))
        .bind(event_id)
        .fetch_optional(e)
        .await?;
    Ok(row.map(from_row))
}

/// Events of a room with `from < stream_ordering <= to`, newest first when `backwards`.
pub async fn room_events<'e>(
    e: impl Exec<'e>,
    room_id: &str,
    from: i64,
    to: i64,
    backwards: bool,
    limit: i64,
) -> Result<Vec<StoredEvent>> {
    let order = if backwards { "DESC" } else { "ASC" };
    let rows: Vec<EventRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM events WHERE room_id = $1 AND stream_ordering > $2 \
         AND stream_ordering <= $3 ORDER BY stream_ordering {order} LIMIT $4"
    ))
    .bind(room_id)
    .bind(from)
    .bind(to)
    .bind(limit)
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// A room's events sent (by their `origin_server_ts`) in `from_ts <= ts < to_ts`, after the
/// stream position `after`, in stream order, at most `limit`: pages of a room's archive.
pub async fn room_events_sent_between<'e>(
    e: impl Exec<'e>,
    room_id: &str,
    from_ts: i64,
    to_ts: i64,
    after: i64,
    limit: i64,
) -> Result<Vec<StoredEvent>> {
    let rows: Vec<EventRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM events WHERE room_id = $1 AND origin_server_ts >= $2 AND origin_server_ts < $3 \
         AND stream_ordering > $4 ORDER BY stream_ordering LIMIT $5"
    ))
    .bind(room_id)
    .bind(from_ts)
    .bind(to_ts)
    .bind(after)
    .bind(limit)
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// The ids of a room's newest events with `from < stream_ordering <= to`, newest first: for
/// readers that hold the events themselves in memory.
pub async fn room_event_ids<'e>(
    e: impl Exec<'e>,
    room_id: &str,
    from: i64,
    to: i64,
    limit: i64,
) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT event_id FROM events WHERE room_id = $1 AND stream_ordering > $2 \
         AND stream_ordering <= $3 ORDER BY stream_ordering DESC LIMIT $4",
    )
    .bind(room_id)
    .bind(from)
    .bind(to)
    .bind(limit)
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// The position of a room's last event among `kinds` (the events that move a room up a
/// client's list), if any.
pub async fn last_event_of_kinds<'e>(e: impl Exec<'e>, room_id: &str, kinds: &[&str]) -> Result<Option<i64>> {
    let marks: Vec<String> = (0..kinds.len()).map(|i| format!("${}", i + 2)).collect();
    let sql =
        format!("SELECT MAX(stream_ordering) FROM events WHERE room_id = $1 AND event_type IN ({})", marks.join(", "));
    let mut query = sqlx::query_as::<_, (Option<i64>,)>(&sql).bind(room_id);
    for kind in kinds {
        query = query.bind(*kind);
    }
    Ok(query.fetch_one(e).await?.0)
}

/// Membership events about `user_id` with `from < stream_ordering <= to`, oldest first.
pub async fn membership_events_between<'e>(
    e: impl Exec<'e>,
    user_id: &str,
    from: i64,
    to: i64,
) -> Result<Vec<StoredEvent>> {
    let rows: Vec<EventRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM events WHERE state_key = $1 AND event_type = 'm.room.member' \
         AND stream_ordering > $2 AND stream_ordering <= $3 ORDER BY stream_ordering"
    ))
    .bind(user_id)
    .bind(from)
    .bind(to)
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// The latest event of a room at or before `to`.
pub async fn last_room_event<'e>(e: impl Exec<'e>, room_id: &str, to: i64) -> Result<Option<StoredEvent>> {
    let row: Option<EventRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM events WHERE room_id = $1 AND stream_ordering <= $2 \
         ORDER BY stream_ordering DESC LIMIT 1"
    ))
    .bind(room_id)
    .bind(to)
    .fetch_optional(e)
    .await?;
    Ok(row.map(from_row))
}

/// Marks an event redacted and replaces its stored JSON with the redacted form.
pub async fn redact_event(conn: &mut Connection, event_id: &str, redacted_by: &str, json: &str) -> Result<()> {
    sqlx::query("UPDATE events SET redacted_by = $1, json = $2 WHERE event_id = $3")
        .bind(redacted_by)
        .bind(json)
        .bind(event_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn forward_extremities<'e>(e: impl Exec<'e>, room_id: &str) -> Result<Vec<String>> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT event_id FROM forward_extremities WHERE room_id = $1 ORDER BY event_id")
            .bind(room_id)
            .fetch_all(e)
            .await?;
    Ok(rows.into_iter().map(|(r,)| r).collect())
}

/// Replaces the forward extremities of a room by `event_ids`.
pub async fn set_forward_extremities(conn: &mut Connection, room_id: &str, event_ids: &[&str]) -> Result<()> {
    sqlx::query("DELETE FROM forward_extremities WHERE room_id = $1").bind(room_id).execute(&mut *conn).await?;
    for id in event_ids {
        sqlx::query("INSERT INTO forward_extremities (room_id, event_id) VALUES ($1, $2)")
            .bind(room_id)
            .bind(*id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

pub async fn txn_event<'e>(e: impl Exec<'e>, user_id: &str, device_id: &str, txn_id: &str) -> Result<Option<String>> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT event_id FROM event_txns WHERE user_id = $1 AND device_id = $2 AND txn_id = $3")
            .bind(user_id)
            .bind(device_id)
            .bind(txn_id)
            .fetch_optional(e)
            .await?;
    Ok(row.map(|(r,)| r))
}

/// The transaction id a device used to send an event, if it sent it.
pub async fn txn_for_event<'e>(e: impl Exec<'e>, event_id: &str, device_id: &str) -> Result<Option<String>> {
    let row: Option<(String,)> = sqlx::query_as("SELECT txn_id FROM event_txns WHERE event_id = $1 AND device_id = $2")
        .bind(event_id)
        .bind(device_id)
        .fetch_optional(e)
        .await?;
    Ok(row.map(|(r,)| r))
}

/// Events that relate to `event_id`, optionally of one relation type and one event type,
/// with `from < stream_ordering <= to`.
#[allow(clippy::too_many_arguments)]
pub async fn relations<'e>(
    e: impl Exec<'e>,
    event_id: &str,
    rel_type: Option<&str>,
    event_type: Option<&str>,
    from: i64,
    to: i64,
    backwards: bool,
    limit: i64,
) -> Result<Vec<StoredEvent>> {
    let order = if backwards { "DESC" } else { "ASC" };
    let rows: Vec<EventRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM events WHERE relates_to = $1 AND ($2 IS NULL OR rel_type = $2) \
         AND ($3 IS NULL OR event_type = $3) AND stream_ordering > $4 AND stream_ordering <= $5 \
         ORDER BY stream_ordering {order} LIMIT $6"
    ))
    .bind(event_id)
    .bind(rel_type)
    .bind(event_type)
    .bind(from)
    .bind(to)
    .bind(limit)
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// Thread roots of a room, by latest activity (newest first), before stream position `before`.
/// Returns (root event id, latest stream ordering in the thread, number of replies).
pub async fn threads<'e>(e: impl Exec<'e>, room_id: &str, before: i64, limit: i64) -> Result<Vec<(String, i64, i64)>> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT relates_to, MAX(stream_ordering) AS latest, COUNT(*) FROM events \
         WHERE room_id = $1 AND rel_type = 'm.thread' AND redacted_by IS NULL \
         GROUP BY relates_to HAVING MAX(stream_ordering) < $2 ORDER BY latest DESC LIMIT $3",
    )
    .bind(room_id)
    .bind(before)
    .bind(limit)
    .fetch_all(e)
    .await?;
    Ok(rows)
}

/// The room's event closest to `ts` (the last at or before it, or with `forward` the first at
/// or after it) among those at stream positions up to `until`: (event id, origin_server_ts).
/// No index serves it (one on every event would slow every write for a rare request): it reads
/// the room's events.
pub async fn event_at_timestamp<'e>(
    e: impl Exec<'e>,
    room_id: &str,
    ts: i64,
    forward: bool,
    until: i64,
) -> Result<Option<(String, i64)>> {
    let (cmp, order) = if forward { (">=", "ASC") } else { ("<=", "DESC") };
    Ok(sqlx::query_as(&format!(
        "SELECT event_id, origin_server_ts FROM events WHERE room_id = $1 AND origin_server_ts {cmp} $2 \
         AND stream_ordering <= $3 ORDER BY origin_server_ts {order}, stream_ordering {order} LIMIT 1"
    ))
    .bind(room_id)
    .bind(ts)
    .bind(until)
    .fetch_optional(e)
    .await?)
}

/// What a thread root's clients are shown of its thread, one row per root of `roots` that has
/// replies: (root, number of replies, latest reply's stream position, whether `user` sent one).
pub async fn thread_summaries<'e>(
    e: impl Exec<'e>,
    roots: &[&str],
    user: &str,
) -> Result<Vec<(String, i64, i64, i64)>> {
    if roots.is_empty() {
        return Ok(Vec::new());
    }
    let marks: Vec<String> = (0..roots.len()).map(|i| format!("${}", i + 2)).collect();
    let sql = format!(
        "SELECT relates_to, COUNT(*), MAX(stream_ordering), MAX(CASE WHEN sender = $1 THEN 1 ELSE 0 END) \
         FROM events WHERE relates_to IN ({}) AND rel_type = 'm.thread' AND redacted_by IS NULL \
         GROUP BY relates_to",
        marks.join(", ")
    );
    let mut query = sqlx::query_as::<_, (String, i64, i64, i64)>(&sql).persistent(false).bind(user);
    for root in roots {
        query = query.bind(*root);
    }
    Ok(query.fetch_all(e).await?)
}

/// Whether a room holds any thread reply (redacted or not).
pub async fn room_has_threads<'e>(e: impl Exec<'e>, room_id: &str) -> Result<bool> {
    let row: Option<(i64,)> =
        sqlx::query_as("SELECT 1 FROM events WHERE room_id = $1 AND rel_type = 'm.thread' LIMIT 1")
            .bind(room_id)
            .fetch_optional(e)
            .await?;
    Ok(row.is_some())
}

pub async fn event_by_stream<'e>(e: impl Exec<'e>, stream_ordering: i64) -> Result<Option<StoredEvent>> {
    let row: Option<EventRow> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM events WHERE stream_ordering = $1"))
        .bind(stream_ordering)
        .fetch_optional(e)
        .await?;
    Ok(row.map(from_row))
}

/// The highest stream position any stream has used (events and the other streams).
pub async fn max_stream_ordering<'e>(e: impl Exec<'e>) -> Result<i64> {
    let row: (Option<i64>,) = sqlx::query_as("SELECT MAX(stream_ordering) FROM events").fetch_one(e).await?;
    Ok(row.0.unwrap_or(0))
}

/// Membership changes in any room with `from < stream_ordering <= to`:
/// (room id, user id, membership JSON content).
pub async fn membership_changes_between<'e>(
    e: impl Exec<'e>,
    from: i64,
    to: i64,
) -> Result<Vec<(String, String, String)>> {
    Ok(sqlx::query_as(
        "SELECT room_id, state_key, json FROM events WHERE event_type = 'm.room.member' \
         AND stream_ordering > $1 AND stream_ordering <= $2 ORDER BY stream_ordering",
    )
    .bind(from)
    .bind(to)
    .fetch_all(e)
    .await?)
}

/// Unredacted events of `types` past stream position `bound` (what the search index catches
/// up on): above it, oldest first (`upwards`), or below it, newest first (history fetched from
/// other servers); at most `limit`.
pub async fn events_of_types<'e>(
    e: impl Exec<'e>,
    types: &[&str],
    bound: i64,
    upwards: bool,
    limit: i64,
) -> Result<Vec<StoredEvent>> {
    let placeholders: Vec<String> = (0..types.len()).map(|i| format!("${}", i + 3)).collect();
    let (cmp, order) = if upwards { (">", "ASC") } else { ("<", "DESC") };
    let sql = format!(
        "SELECT {COLUMNS} FROM events WHERE stream_ordering {cmp} $1 AND redacted_by IS NULL \
         AND event_type IN ({}) ORDER BY stream_ordering {order} LIMIT $2",
        placeholders.join(", ")
    );
    let mut q = sqlx::query_as::<_, EventRow>(&sql).bind(bound).bind(limit);
    for t in types {
        q = q.bind(*t);
    }
    Ok(q.fetch_all(e).await?.into_iter().map(from_row).collect())
}

/// The lowest stream position of any event (0 when there are none below 1): history fetched
/// from other servers takes positions below it.
pub async fn min_stream_ordering<'e>(e: impl Exec<'e>) -> Result<i64> {
    let row: (Option<i64>,) = sqlx::query_as("SELECT MIN(stream_ordering) FROM events").fetch_one(e).await?;
    Ok(row.0.unwrap_or(0).min(0))
}

/// The room's event with the lowest stream position (its oldest known here).
pub async fn oldest_room_event<'e>(e: impl Exec<'e>, room_id: &str) -> Result<Option<StoredEvent>> {
    let row: Option<EventRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM events WHERE room_id = $1 ORDER BY stream_ordering ASC LIMIT 1"
    ))
    .bind(room_id)
    .fetch_optional(e)
    .await?;
    Ok(row.map(from_row))
}

/// The contents of a room's events that were not redacted (as their JSON), for what they
/// carry (media).
pub async fn room_event_jsons<'e>(e: impl Exec<'e>, room_id: &str) -> Result<Vec<String>> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT json FROM events WHERE room_id = $1 AND redacted_by IS NULL ORDER BY stream_ordering")
            .bind(room_id)
            .fetch_all(e)
            .await?;
    Ok(rows.into_iter().map(|(j,)| j).collect())
}
