//! Other servers' users' device lists, as this server keeps them (see migration 0022).

use crate::{Connection, Exec, Result};

/// A remote user's list: where it stands, and its cross-signing keys (JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceList {
    pub stream_id: i64,
    pub stale: bool,
    pub master_key: Option<String>,
    pub self_signing_key: Option<String>,
}

/// A remote device: its id, keys (JSON object) and display name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteDevice {
    pub device_id: String,
    pub device_keys: String,
    pub display_name: Option<String>,
}

pub async fn list<'e>(e: impl Exec<'e>, user_id: &str) -> Result<Option<DeviceList>> {
    let row: Option<(i64, i64, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT stream_id, stale, master_key, self_signing_key FROM remote_device_lists WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(e)
    .await?;
    Ok(row.map(|(stream_id, stale, master_key, self_signing_key)| DeviceList {
        stream_id,
        stale: stale != 0,
        master_key,
        self_signing_key,
    }))
}

pub async fn devices<'e>(e: impl Exec<'e>, user_id: &str) -> Result<Vec<RemoteDevice>> {
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT device_id, device_keys, display_name FROM remote_devices WHERE user_id = $1 ORDER BY device_id",
    )
    .bind(user_id)
    .fetch_all(e)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(device_id, device_keys, display_name)| RemoteDevice { device_id, device_keys, display_name })
        .collect())
}

/// Sets where a list stands (and its cross-signing keys).
pub async fn put_list<'e>(e: impl Exec<'e>, user_id: &str, list: &DeviceList, now: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO remote_device_lists (user_id, stream_id, stale, master_key, self_signing_key, updated_ts) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id, \
         stale = excluded.stale, master_key = excluded.master_key, self_signing_key = excluded.self_signing_key, \
         updated_ts = excluded.updated_ts",
    )
    .bind(user_id)
    .bind(list.stream_id)
    .bind(i64::from(list.stale))
    .bind(list.master_key.as_deref())
    .bind(list.self_signing_key.as_deref())
    .bind(now)
    .execute(e)
    .await?;
    Ok(())
}

/// A resync's answer: the whole list replaced (one transaction).
pub async fn replace(
    conn: &mut Connection,
    user_id: &str,
    list: &DeviceList,
    devices: &[RemoteDevice],
    now: i64,
) -> Result<()> {
    sqlx::query("DELETE FROM remote_devices WHERE user_id = $1").bind(user_id).execute(&mut *conn).await?;
    for d in devices {
        put_device(conn, user_id, d).await?;
    }
    put_list(&mut *conn, user_id, list, now).await
}

async fn put_device(conn: &mut Connection, user_id: &str, d: &RemoteDevice) -> Result<()> {
    sqlx::query(
        "INSERT INTO remote_devices (user_id, device_id, device_keys, display_name) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (user_id, device_id) DO UPDATE SET device_keys = excluded.device_keys, \
         display_name = excluded.display_name",
    )
    .bind(user_id)
    .bind(&d.device_id)
    .bind(&d.device_keys)
    .bind(d.display_name.as_deref())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// One update taken in: a device changed (or `None`: deleted), the list moved to `list`.
pub async fn update(
    conn: &mut Connection,
    user_id: &str,
    list: &DeviceList,
    device_id: &str,
    device: Option<&RemoteDevice>,
    now: i64,
) -> Result<()> {
    match device {
        Some(d) => put_device(conn, user_id, d).await?,
        None => {
            sqlx::query("DELETE FROM remote_devices WHERE user_id = $1 AND device_id = $2")
                .bind(user_id)
                .bind(device_id)
                .execute(&mut *conn)
                .await?;
        }
    }
    put_list(&mut *conn, user_id, list, now).await
}

/// Marks lists stale: the next query resyncs them.
pub async fn mark_stale<'e>(e: impl Exec<'e>, user_id: &str) -> Result<()> {
    sqlx::query("UPDATE remote_device_lists SET stale = 1 WHERE user_id = $1").bind(user_id).execute(e).await?;
    Ok(())
}

/// Forgets a user's list (no local user shares a room with them anymore).
pub async fn forget(conn: &mut Connection, user_id: &str) -> Result<()> {
    sqlx::query("DELETE FROM remote_devices WHERE user_id = $1").bind(user_id).execute(&mut *conn).await?;
    sqlx::query("DELETE FROM remote_device_lists WHERE user_id = $1").bind(user_id).execute(&mut *conn).await?;
    Ok(())
}
