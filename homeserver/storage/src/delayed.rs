//! Delayed events (MSC4140): what clients scheduled, and what became of it.

use crate::{Exec, Result};

/// A delayed event as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Delayed {
    pub delay_id: String,
    pub user_id: String,
    pub device_id: String,
    pub txn_id: Option<String>,
    pub room_id: String,
    pub event_type: String,
    pub state_key: Option<String>,
    pub content: String,
    pub delay_ms: i64,
    pub running_since: i64,
    pub send_ts: i64,
    pub status: String,
    pub reason: Option<String>,
    pub event_id: Option<String>,
    pub error: Option<String>,
    pub finalised_ts: Option<i64>,
}

const COLUMNS: &str = "delay_id, user_id, device_id, txn_id, room_id, event_type, state_key, content, delay_ms, \
                       running_since, send_ts, status, reason, event_id, error, finalised_ts";

type Row = (
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    Option<String>,
    String,
    i64,
    i64,
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
);

fn from_row(r: Row) -> Delayed {
    let (delay_id, user_id, device_id, txn_id, room_id, event_type, state_key, content, delay_ms, running_since) =
        (r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9);
    Delayed {
        delay_id,
        user_id,
        device_id,
        txn_id,
        room_id,
        event_type,
        state_key,
        content,
        delay_ms,
        running_since,
        send_ts: r.10,
        status: r.11,
        reason: r.12,
        event_id: r.13,
        error: r.14,
        finalised_ts: r.15,
    }
}

/// Records a newly scheduled event. False when the (user, device, transaction) already
/// scheduled one (a retried request).
pub async fn insert<'e>(e: impl Exec<'e>, d: &Delayed) -> Result<bool> {
    let done = sqlx::query(&format!(
        "INSERT INTO delayed_events ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
         $14, $15, $16) ON CONFLICT DO NOTHING"
    ))
    .bind(&d.delay_id)
    .bind(&d.user_id)
    .bind(&d.device_id)
    .bind(&d.txn_id)
    .bind(&d.room_id)
    .bind(&d.event_type)
    .bind(&d.state_key)
    .bind(&d.content)
    .bind(d.delay_ms)
    .bind(d.running_since)
    .bind(d.send_ts)
    .bind(&d.status)
    .bind(&d.reason)
    .bind(&d.event_id)
    .bind(&d.error)
    .bind(d.finalised_ts)
    .execute(e)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The delayed event a (user, device, transaction) scheduled.
pub async fn by_txn<'e>(e: impl Exec<'e>, user_id: &str, device_id: &str, txn_id: &str) -> Result<Option<Delayed>> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM delayed_events WHERE user_id = $1 AND device_id = $2 AND txn_id = $3"
    ))
    .bind(user_id)
    .bind(device_id)
    .bind(txn_id)
    .fetch_optional(e)
    .await?;
    Ok(row.map(from_row))
}

pub async fn get<'e>(e: impl Exec<'e>, delay_id: &str) -> Result<Option<Delayed>> {
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM delayed_events WHERE delay_id = $1"))
        .bind(delay_id)
        .fetch_optional(e)
        .await?;
    Ok(row.map(from_row))
}

/// How many events a user has scheduled, and when the next of them is due.
pub async fn scheduled_count<'e>(e: impl Exec<'e>, user_id: &str) -> Result<(i64, Option<i64>)> {
    let row: (i64, Option<i64>) = sqlx::query_as(
        "SELECT COUNT(*), MIN(send_ts) FROM delayed_events WHERE user_id = $1 AND status IN ('scheduled', 'sending')",
    )
    .bind(user_id)
    .fetch_one(e)
    .await?;
    Ok(row)
}

/// A user's delayed events, in order of their send time; scheduled ones only, or finalised
/// ones only, when `finalised` says so; of one room and one type when given.
pub async fn list<'e>(
    e: impl Exec<'e>,
    user_id: &str,
    finalised: Option<bool>,
    room_id: Option<&str>,
    event_type: Option<&str>,
    limit: i64,
) -> Result<Vec<Delayed>> {
    let status = match finalised {
        None => "",
        Some(false) => "AND status IN ('scheduled', 'sending')",
        Some(true) => "AND status IN ('send', 'cancel', 'error')",
    };
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM delayed_events WHERE user_id = $1 {status} AND ($2 IS NULL OR room_id = $2) \
         AND ($3 IS NULL OR event_type = $3) ORDER BY send_ts, delay_id LIMIT $4"
    ))
    .bind(user_id)
    .bind(room_id)
    .bind(event_type)
    .bind(limit)
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// When the next scheduled event is due.
pub async fn next_due<'e>(e: impl Exec<'e>) -> Result<Option<i64>> {
    let row: (Option<i64>,) =
        sqlx::query_as("SELECT MIN(send_ts) FROM delayed_events WHERE status = 'scheduled'").fetch_one(e).await?;
    Ok(row.0)
}

/// Scheduled events due at `now`, the earliest first.
pub async fn due<'e>(e: impl Exec<'e>, now: i64, limit: i64) -> Result<Vec<Delayed>> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM delayed_events WHERE status = 'scheduled' AND send_ts <= $1 ORDER BY send_ts LIMIT $2"
    ))
    .bind(now)
    .bind(limit)
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// Takes a scheduled event for sending: true for the one caller that took it.
pub async fn claim<'e>(e: impl Exec<'e>, delay_id: &str) -> Result<bool> {
    let done = sqlx::query("UPDATE delayed_events SET status = 'sending' WHERE delay_id = $1 AND status = 'scheduled'")
        .bind(delay_id)
        .execute(e)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Puts an event taken for sending back on the schedule (its send failed, and it may succeed
/// later).
pub async fn unclaim<'e>(e: impl Exec<'e>, delay_id: &str) -> Result<()> {
    sqlx::query("UPDATE delayed_events SET status = 'scheduled' WHERE delay_id = $1 AND status = 'sending'")
        .bind(delay_id)
        .execute(e)
        .await?;
    Ok(())
}

/// Events left being sent when the server stopped go back on the schedule.
pub async fn unclaim_all<'e>(e: impl Exec<'e>) -> Result<u64> {
    let done =
        sqlx::query("UPDATE delayed_events SET status = 'scheduled' WHERE status = 'sending'").execute(e).await?;
    Ok(done.rows_affected())
}

/// Restarts a scheduled event's delay from `now`; false when it is not scheduled.
pub async fn restart<'e>(e: impl Exec<'e>, delay_id: &str, now: i64) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE delayed_events SET running_since = $2, send_ts = $2 + delay_ms \
         WHERE delay_id = $1 AND status = 'scheduled'",
    )
    .bind(delay_id)
    .bind(now)
    .execute(e)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Finalises an event: sent (`send`, with its event id), cancelled (`cancel`) or failed
/// (`error`, with the error's body), from the states `from` lists.
#[allow(clippy::too_many_arguments)]
pub async fn finalise<'e>(
    e: impl Exec<'e>,
    delay_id: &str,
    from: &str,
    status: &str,
    reason: &str,
    event_id: Option<&str>,
    error: Option<&str>,
    now: i64,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE delayed_events SET status = $2, reason = $3, event_id = $4, error = $5, finalised_ts = $6 \
         WHERE delay_id = $1 AND status = $7",
    )
    .bind(delay_id)
    .bind(status)
    .bind(reason)
    .bind(event_id)
    .bind(error)
    .bind(now)
    .bind(from)
    .execute(e)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Forgets finalised events older than `before`; answers how many.
pub async fn prune<'e>(e: impl Exec<'e>, before: i64) -> Result<u64> {
    let done =
        sqlx::query("DELETE FROM delayed_events WHERE status IN ('send', 'cancel', 'error') AND finalised_ts < $1")
            .bind(before)
            .execute(e)
            .await?;
    Ok(done.rows_affected())
}
