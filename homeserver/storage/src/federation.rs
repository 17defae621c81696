//! Federation: outliers, other servers' keys, the outbound queue, received transactions.

use crate::{Exec, Result};

/// Stores events outside the timeline; those already known (as outliers) are kept as they are.
pub async fn insert_outliers(conn: &mut crate::Connection, events: &[(&str, &str, &str)]) -> Result<()> {
    let head = "INSERT INTO outliers (event_id, room_id, json)";
    let tail = " ON CONFLICT (event_id) DO NOTHING";
    crate::insert_rows_with_tail(conn, head, 3, events, tail, |q, (id, room, json)| q.bind(*id).bind(*room).bind(*json))
        .await
}

/// An outlier: (room id, JSON).
pub async fn get_outlier<'e>(e: impl Exec<'e>, event_id: &str) -> Result<Option<(String, String)>> {
    Ok(sqlx::query_as("SELECT room_id, json FROM outliers WHERE event_id = $1")
        .bind(event_id)
        .fetch_optional(e)
        .await?)
}

/// A stored key of another server: (public key, valid until, expired at).
pub type ServerKey = (String, String, i64, Option<i64>);

/// The keys stored for `server`: (key id, public key, valid until, expired at).
pub async fn server_keys<'e>(e: impl Exec<'e>, server: &str) -> Result<Vec<ServerKey>> {
    Ok(sqlx::query_as("SELECT key_id, public_key, valid_until_ts, expired_ts FROM server_keys WHERE server_name = $1")
        .bind(server)
        .fetch_all(e)
        .await?)
}

/// Stores a key of another server, or extends what is known of it.
pub async fn put_server_key<'e>(
    e: impl Exec<'e>,
    server: &str,
    key_id: &str,
    public_key: &str,
    valid_until_ts: i64,
    expired_ts: Option<i64>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO server_keys (server_name, key_id, public_key, valid_until_ts, expired_ts) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (server_name, key_id) DO UPDATE SET \
         public_key = excluded.public_key, valid_until_ts = excluded.valid_until_ts, expired_ts = excluded.expired_ts",
    )
    .bind(server)
    .bind(key_id)
    .bind(public_key)
    .bind(valid_until_ts)
    .bind(expired_ts)
    .execute(e)
    .await?;
    Ok(())
}

/// The highest id of the outbound queue (0 when empty).
pub async fn max_outbox_id<'e>(e: impl Exec<'e>) -> Result<i64> {
    let (max,): (Option<i64>,) = sqlx::query_as("SELECT MAX(id) FROM federation_outbox").fetch_one(e).await?;
    Ok(max.unwrap_or(0))
}

/// Queues items for destinations: (id, destination, kind, payload).
pub async fn enqueue(conn: &mut crate::Connection, items: &[(i64, &str, &str, &str)]) -> Result<()> {
    let head = "INSERT INTO federation_outbox (id, destination, kind, payload)";
    crate::insert_rows(conn, head, 4, items, |q, (id, dest, kind, payload)| {
        q.bind(*id).bind(*dest).bind(*kind).bind(*payload)
    })
    .await
}

/// The oldest items waiting for `destination`: (id, kind, payload).
pub async fn outbox<'e>(e: impl Exec<'e>, destination: &str, limit: i64) -> Result<Vec<(i64, String, String)>> {
    Ok(sqlx::query_as("SELECT id, kind, payload FROM federation_outbox WHERE destination = $1 ORDER BY id LIMIT $2")
        .bind(destination)
        .bind(limit)
        .fetch_all(e)
        .await?)
}

/// Removes what was delivered to `destination`, up to `up_to`.
pub async fn delivered<'e>(e: impl Exec<'e>, destination: &str, up_to: i64) -> Result<()> {
    sqlx::query("DELETE FROM federation_outbox WHERE destination = $1 AND id <= $2")
        .bind(destination)
        .bind(up_to)
        .execute(e)
        .await?;
    Ok(())
}

/// Every destination with something waiting.
pub async fn pending_destinations<'e>(e: impl Exec<'e>) -> Result<Vec<String>> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT DISTINCT destination FROM federation_outbox").fetch_all(e).await?;
    Ok(rows.into_iter().map(|(d,)| d).collect())
}

/// The answer given to a transaction already received.
pub async fn txn_response<'e>(e: impl Exec<'e>, origin: &str, txn_id: &str) -> Result<Option<String>> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT response FROM federation_txns WHERE origin = $1 AND txn_id = $2")
            .bind(origin)
            .bind(txn_id)
            .fetch_optional(e)
            .await?;
    Ok(row.map(|(r,)| r))
}

/// Records the answer to a transaction.
pub async fn put_txn_response<'e>(e: impl Exec<'e>, origin: &str, txn_id: &str, response: &str, ts: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO federation_txns (origin, txn_id, response, received_ts) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (origin, txn_id) DO NOTHING",
    )
    .bind(origin)
    .bind(txn_id)
    .bind(response)
    .bind(ts)
    .execute(e)
    .await?;
    Ok(())
}

/// How many items wait for each destination (the federation queue, for the metrics).
pub async fn outbox_lengths<'e>(e: impl Exec<'e>) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as("SELECT destination, COUNT(*) FROM federation_outbox GROUP BY destination").fetch_all(e).await?)
}
