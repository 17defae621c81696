//! The non-event streams that `/sync` reports: account data, receipts, presence; and filters.

use crate::{Exec, Result};

/// Sets account data; `room_id` is "" for global account data.
pub async fn set_account_data<'e>(
    e: impl Exec<'e>,
    user_id: &str,
    room_id: &str,
    data_type: &str,
    content: &str,
    stream_id: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO account_data (user_id, room_id, data_type, content, stream_id) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, room_id, data_type) DO UPDATE SET \
         content = excluded.content, stream_id = excluded.stream_id",
    )
    .bind(user_id)
    .bind(room_id)
    .bind(data_type)
    .bind(content)
    .bind(stream_id)
    .execute(e)
    .await?;
    Ok(())
}

pub async fn get_account_data<'e>(
    e: impl Exec<'e>,
    user_id: &str,
    room_id: &str,
    data_type: &str,
) -> Result<Option<String>> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND data_type = $3")
            .bind(user_id)
            .bind(room_id)
            .bind(data_type)
            .fetch_optional(e)
            .await?;
    Ok(row.map(|(c,)| c))
}

/// Account data changed with `from < stream_id <= to`: (room id, type, content).
pub async fn account_data_between<'e>(
    e: impl Exec<'e>,
    user_id: &str,
    from: i64,
    to: i64,
) -> Result<Vec<(String, String, String)>> {
    Ok(sqlx::query_as(
        "SELECT room_id, data_type, content FROM account_data WHERE user_id = $1 \
         AND stream_id > $2 AND stream_id <= $3 ORDER BY stream_id",
    )
    .bind(user_id)
    .bind(from)
    .bind(to)
    .fetch_all(e)
    .await?)
}

/// A user's account data in one room (`""` for the global ones): type and content.
pub async fn account_data_in<'e>(e: impl Exec<'e>, user_id: &str, room_id: &str) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT data_type, content FROM account_data WHERE user_id = $1 AND room_id = $2 ORDER BY stream_id",
    )
    .bind(user_id)
    .bind(room_id)
    .fetch_all(e)
    .await?)
}

#[derive(Clone, Debug)]
pub struct Receipt {
    pub user_id: String,
    pub receipt_type: String,
    pub thread_id: String,
    pub event_id: String,
    pub ts: i64,
}

#[allow(clippy::too_many_arguments)]
pub async fn set_receipt<'e>(
    e: impl Exec<'e>,
    room_id: &str,
    user_id: &str,
    receipt_type: &str,
    thread_id: &str,
    event_id: &str,
    ts: i64,
    stream_id: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO receipts (room_id, user_id, receipt_type, thread_id, event_id, ts, stream_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (room_id, user_id, receipt_type, thread_id) \
         DO UPDATE SET event_id = excluded.event_id, ts = excluded.ts, stream_id = excluded.stream_id",
    )
    .bind(room_id)
    .bind(user_id)
    .bind(receipt_type)
    .bind(thread_id)
    .bind(event_id)
    .bind(ts)
    .bind(stream_id)
    .execute(e)
    .await?;
    Ok(())
}

/// Receipts of a room with `from < stream_id <= to`.
pub async fn receipts_between<'e>(e: impl Exec<'e>, room_id: &str, from: i64, to: i64) -> Result<Vec<Receipt>> {
    let rows: Vec<(String, String, String, String, i64)> = sqlx::query_as(
        "SELECT user_id, receipt_type, thread_id, event_id, ts FROM receipts WHERE room_id = $1 \
         AND stream_id > $2 AND stream_id <= $3",
    )
    .bind(room_id)
    .bind(from)
    .bind(to)
    .fetch_all(e)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Receipt { user_id: r.0, receipt_type: r.1, thread_id: r.2, event_id: r.3, ts: r.4 })
        .collect())
}

/// Receipts of every room with `from < stream_id <= to`: (room id, receipt).
pub async fn all_receipts_between<'e>(e: impl Exec<'e>, from: i64, to: i64) -> Result<Vec<(String, Receipt)>> {
    let rows: Vec<(String, String, String, String, String, i64)> = sqlx::query_as(
        "SELECT room_id, user_id, receipt_type, thread_id, event_id, ts FROM receipts \
         WHERE stream_id > $1 AND stream_id <= $2",
    )
    .bind(from)
    .bind(to)
    .fetch_all(e)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.0, Receipt { user_id: r.1, receipt_type: r.2, thread_id: r.3, event_id: r.4, ts: r.5 }))
        .collect())
}

/// The event a user's receipt of a type points at in a room's thread (`""` unthreaded,
/// `main`, or a thread root).
pub async fn user_receipt<'e>(
    e: impl Exec<'e>,
    room_id: &str,
    user_id: &str,
    receipt_type: &str,
    thread_id: &str,
) -> Result<Option<String>> {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT event_id FROM receipts WHERE room_id = $1 AND user_id = $2 AND receipt_type = $3 AND thread_id = $4",
    )
    .bind(room_id)
    .bind(user_id)
    .bind(receipt_type)
    .bind(thread_id)
    .fetch_optional(e)
    .await?;
    Ok(row.map(|(r,)| r))
}

pub async fn insert_filter<'e>(e: impl Exec<'e>, user_id: &str, filter_id: i64, json: &str) -> Result<()> {
    sqlx::query("INSERT INTO filters (user_id, filter_id, json) VALUES ($1, $2, $3)")
        .bind(user_id)
        .bind(filter_id)
        .bind(json)
        .execute(e)
        .await?;
    Ok(())
}

pub async fn get_filter<'e>(e: impl Exec<'e>, user_id: &str, filter_id: i64) -> Result<Option<String>> {
    let row: Option<(String,)> = sqlx::query_as("SELECT json FROM filters WHERE user_id = $1 AND filter_id = $2")
        .bind(user_id)
        .bind(filter_id)
        .fetch_optional(e)
        .await?;
    Ok(row.map(|(r,)| r))
}

#[derive(Clone, Debug)]
pub struct Presence {
    pub user_id: String,
    pub state: String,
    pub status_msg: Option<String>,
    pub last_active_ts: i64,
}

pub async fn set_presence<'e>(
    e: impl Exec<'e>,
    user_id: &str,
    state: &str,
    status_msg: Option<&str>,
    now: i64,
    stream_id: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO presence (user_id, state, status_msg, last_active_ts, stream_id) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id) DO UPDATE SET state = excluded.state, \
         status_msg = excluded.status_msg, last_active_ts = excluded.last_active_ts, \
         stream_id = excluded.stream_id",
    )
    .bind(user_id)
    .bind(state)
    .bind(status_msg)
    .bind(now)
    .bind(stream_id)
    .execute(e)
    .await?;
    Ok(())
}

pub async fn get_presence<'e>(e: impl Exec<'e>, user_id: &str) -> Result<Option<Presence>> {
    let row: Option<(String, String, Option<String>, i64)> =
        sqlx::query_as("SELECT user_id, state, status_msg, last_active_ts FROM presence WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(e)
            .await?;
    Ok(row.map(|r| Presence { user_id: r.0, state: r.1, status_msg: r.2, last_active_ts: r.3 }))
}

/// Presence updates with `from < stream_id <= to`.
pub async fn presence_between<'e>(e: impl Exec<'e>, from: i64, to: i64) -> Result<Vec<Presence>> {
    let rows: Vec<(String, String, Option<String>, i64)> = sqlx::query_as(
        "SELECT user_id, state, status_msg, last_active_ts FROM presence WHERE stream_id > $1 AND stream_id <= $2",
    )
    .bind(from)
    .bind(to)
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(|r| Presence { user_id: r.0, state: r.1, status_msg: r.2, last_active_ts: r.3 }).collect())
}

/// The highest position used by any stream (events, account data, receipts, presence).
pub async fn max_stream_position<'e>(e: impl Exec<'e>) -> Result<i64> {
    let row: (Option<i64>,) = sqlx::query_as(
        "SELECT MAX(m) FROM (SELECT MAX(stream_ordering) AS m FROM events \
         UNION ALL SELECT MAX(stream_id) FROM account_data \
         UNION ALL SELECT MAX(stream_id) FROM receipts \
         UNION ALL SELECT MAX(stream_id) FROM presence \
         UNION ALL SELECT MAX(stream_id) FROM device_list_changes \
         UNION ALL SELECT MAX(stream_id) FROM to_device) AS positions",
    )
    .fetch_one(e)
    .await?;
    Ok(row.0.unwrap_or(0))
}

/// Hands out the next value of a named counter, inside the caller's transaction.
pub async fn next_counter(conn: &mut crate::Connection, name: &str) -> Result<i64> {
    let row: (i64,) = sqlx::query_as(
        "INSERT INTO counters (name, value) VALUES ($1, 1) ON CONFLICT (name) \
         DO UPDATE SET value = counters.value + 1 RETURNING value",
    )
    .bind(name)
    .fetch_one(conn)
    .await?;
    Ok(row.0)
}
