//! The portal's organisation: clearances and kinds of accounts, DR flags of devices.

use crate::{Exec, Result};

/// What the portal's rules need to know of an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    pub clearance: String,
    pub kind: String,
    pub primary_group: Option<String>,
    pub clearance_set_by: Option<String>,
    pub clearance_set_ts: Option<i64>,
}

type Row = (String, String, Option<String>, Option<String>, Option<i64>);

pub async fn attributes<'e>(e: impl Exec<'e>, user_id: &str) -> Result<Option<Attributes>> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT clearance, account_kind, primary_group, clearance_set_by, clearance_set_ts FROM users \
         WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(e)
    .await?;
    Ok(row.map(|r| Attributes {
        clearance: r.0,
        kind: r.1,
        primary_group: r.2,
        clearance_set_by: r.3,
        clearance_set_ts: r.4,
    }))
}

/// Sets a user's clearance, recording who did and when (also in the log).
pub async fn set_clearance(
    conn: &mut crate::Connection,
    user_id: &str,
    level: &str,
    set_by: &str,
    ts: i64,
) -> Result<()> {
    sqlx::query("UPDATE users SET clearance = $1, clearance_set_by = $2, clearance_set_ts = $3 WHERE user_id = $4")
        .bind(level)
        .bind(set_by)
        .bind(ts)
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    log(conn, user_id, "", level, set_by, ts).await
}

pub async fn set_kind<'e>(e: impl Exec<'e>, user_id: &str, kind: &str) -> Result<()> {
    sqlx::query("UPDATE users SET account_kind = $1 WHERE user_id = $2").bind(kind).bind(user_id).execute(e).await?;
    Ok(())
}

pub async fn set_primary_group<'e>(e: impl Exec<'e>, user_id: &str, group: Option<&str>) -> Result<()> {
    sqlx::query("UPDATE users SET primary_group = $1 WHERE user_id = $2").bind(group).bind(user_id).execute(e).await?;
    Ok(())
}

/// A device's DR flag: (flag, set by, set at); `None` when the device does not exist.
pub async fn device_flag<'e>(
    e: impl Exec<'e>,
    user_id: &str,
    device_id: &str,
) -> Result<Option<(bool, Option<String>, Option<i64>)>> {
    let row: Option<(i64, Option<String>, Option<i64>)> =
        sqlx::query_as("SELECT dr_cleared, dr_set_by, dr_set_ts FROM devices WHERE user_id = $1 AND device_id = $2")
            .bind(user_id)
            .bind(device_id)
            .fetch_optional(e)
            .await?;
    Ok(row.map(|(flag, by, ts)| (crate::flag(flag), by, ts)))
}

/// Sets a device's DR flag; false when the device does not exist.
pub async fn set_device_flag(
    conn: &mut crate::Connection,
    user_id: &str,
    device_id: &str,
    dr: bool,
    set_by: &str,
    ts: i64,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE devices SET dr_cleared = $1, dr_set_by = $2, dr_set_ts = $3 WHERE user_id = $4 AND device_id = $5",
    )
    .bind(dr as i64)
    .bind(set_by)
    .bind(ts)
    .bind(user_id)
    .bind(device_id)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    log(conn, user_id, device_id, if dr { "DR" } else { "NP" }, set_by, ts).await?;
    Ok(true)
}

async fn log(
    conn: &mut crate::Connection,
    user_id: &str,
    device_id: &str,
    level: &str,
    set_by: &str,
    ts: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO clearance_log (id, user_id, device_id, level, set_by, set_ts) \
         VALUES ((SELECT COALESCE(MAX(id), 0) + 1 FROM clearance_log WHERE user_id = $1), $1, $2, $3, $4, $5)",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(level)
    .bind(set_by)
    .bind(ts)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A user's clearance history, oldest first: (device id or "", level, set by, set at).
pub async fn clearance_log<'e>(e: impl Exec<'e>, user_id: &str) -> Result<Vec<(String, String, String, i64)>> {
    Ok(sqlx::query_as("SELECT device_id, level, set_by, set_ts FROM clearance_log WHERE user_id = $1 ORDER BY id")
        .bind(user_id)
        .fetch_all(e)
        .await?)
}

/// Whether a room holds any message (non-state) event.
pub async fn room_has_messages<'e>(e: impl Exec<'e>, room_id: &str) -> Result<bool> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM events WHERE room_id = $1 AND state_key IS NULL LIMIT 1")
        .bind(room_id)
        .fetch_optional(e)
        .await?;
    Ok(row.is_some())
}
