//! End-to-end encryption storage: device keys, one-time and fallback keys, to-device messages,
//! the device list stream.

use crate::{Connection, Exec, Result};

pub async fn device_keys<'e>(e: impl Exec<'e>, user_id: &str, device_id: &str) -> Result<Option<String>> {
    let row: Option<(String,)> = sqlx::query_as("SELECT json FROM device_keys WHERE user_id = $1 AND device_id = $2")
        .bind(user_id)
        .bind(device_id)
        .fetch_optional(e)
        .await?;
    Ok(row.map(|(j,)| j))
}

/// Device keys of all of a user's devices: (device id, JSON).
pub async fn user_device_keys<'e>(e: impl Exec<'e>, user_id: &str) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as("SELECT device_id, json FROM device_keys WHERE user_id = $1 ORDER BY device_id")
        .bind(user_id)
        .fetch_all(e)
        .await?)
}

pub async fn set_device_keys(conn: &mut Connection, user_id: &str, device_id: &str, json: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO device_keys (user_id, device_id, json) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id, device_id) DO UPDATE SET json = excluded.json",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(json)
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds a one-time key; an existing key id keeps its first upload (returns false then).
pub async fn add_one_time_key(
    conn: &mut Connection,
    user_id: &str,
    device_id: &str,
    (algorithm, key_id): (&str, &str),
    json: &str,
) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO one_time_keys (user_id, device_id, algorithm, key_id, json) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT DO NOTHING",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(algorithm)
    .bind(key_id)
    .bind(json)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// The stored JSON of one one-time key, to compare a re-upload with it.
pub async fn one_time_key<'e>(
    e: impl Exec<'e>,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
    key_id: &str,
) -> Result<Option<String>> {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT json FROM one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id = $4",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(algorithm)
    .bind(key_id)
    .fetch_optional(e)
    .await?;
    Ok(row.map(|(j,)| j))
}

/// Unclaimed one-time keys by algorithm.
pub async fn one_time_key_counts<'e>(e: impl Exec<'e>, user_id: &str, device_id: &str) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT algorithm, COUNT(*) FROM one_time_keys WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm",
    )
    .bind(user_id)
    .bind(device_id)
    .fetch_all(e)
    .await?)
}

/// Takes one one-time key of the algorithm: (key id, JSON), removed from the store.
pub async fn claim_one_time_key(
    conn: &mut Connection,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
) -> Result<Option<(String, String)>> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT key_id, json FROM one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 \
         ORDER BY key_id LIMIT 1",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(algorithm)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((key_id, _)) = &row {
        sqlx::query(
            "DELETE FROM one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id = $4",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(algorithm)
        .bind(key_id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(row)
}

pub async fn set_fallback_key(
    conn: &mut Connection,
    user_id: &str,
    device_id: &str,
    (algorithm, key_id): (&str, &str),
    json: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, json, used) VALUES ($1, $2, $3, $4, $5, 0) \
         ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET key_id = excluded.key_id, \
         json = excluded.json, used = 0",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(algorithm)
    .bind(key_id)
    .bind(json)
    .execute(conn)
    .await?;
    Ok(())
}

/// The fallback key of the algorithm, marked used: (key id, JSON).
pub async fn claim_fallback_key(
    conn: &mut Connection,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
) -> Result<Option<(String, String)>> {
    let row: Option<(String, String)> = sqlx::query_as(
        "UPDATE fallback_keys SET used = 1 WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 \
         RETURNING key_id, json",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(algorithm)
    .fetch_optional(conn)
    .await?;
    Ok(row)
}

/// Algorithms whose fallback key is still unused.
pub async fn unused_fallback_algorithms<'e>(e: impl Exec<'e>, user_id: &str, device_id: &str) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT algorithm FROM fallback_keys WHERE user_id = $1 AND device_id = $2 AND used = 0 ORDER BY algorithm",
    )
    .bind(user_id)
    .bind(device_id)
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(|(a,)| a).collect())
}

/// Removes every key of a device (when the device is deleted).
pub async fn delete_device_keys(conn: &mut Connection, user_id: &str, device_id: &str) -> Result<()> {
    for table in ["device_keys", "one_time_keys", "fallback_keys", "to_device"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1 AND device_id = $2"))
            .bind(user_id)
            .bind(device_id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

pub async fn record_device_list_change<'e>(e: impl Exec<'e>, user_id: &str, stream_id: i64) -> Result<()> {
    sqlx::query("INSERT INTO device_list_changes (stream_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(stream_id)
        .bind(user_id)
        .execute(e)
        .await?;
    Ok(())
}

/// Records that `signer` signed `target`'s master key at `stream_id`: a change of `target`'s
/// keys that only `signer` hears of.
pub async fn record_signature_change<'e>(e: impl Exec<'e>, signer: &str, target: &str, stream_id: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO device_list_changes (stream_id, user_id, visible_to) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(stream_id)
    .bind(target)
    .bind(signer)
    .execute(e)
    .await?;
    Ok(())
}

/// Users whose devices changed with `from < stream_id <= to`, as `viewer` hears of them:
/// (user, whether the change is the viewer's own signature of the user, which `viewer`
/// hears of whether or not they share a room).
pub async fn device_list_changes_between<'e>(
    e: impl Exec<'e>,
    viewer: &str,
    from: i64,
    to: i64,
) -> Result<Vec<(String, bool)>> {
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT DISTINCT user_id, visible_to FROM device_list_changes \
         WHERE stream_id > $1 AND stream_id <= $2 AND (visible_to IS NULL OR visible_to = $3)",
    )
    .bind(from)
    .bind(to)
    .bind(viewer)
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(|(u, v)| (u, v.is_some())).collect())
}

/// Queues to-device messages (user, device, content) from `sender`, at one stream position.
pub async fn add_to_device(
    conn: &mut Connection,
    stream_id: i64,
    sender: &str,
    event_type: &str,
    messages: &[(String, String, String)],
) -> Result<()> {
    for (user, device, content) in messages {
        sqlx::query(
            "INSERT INTO to_device (stream_id, user_id, device_id, sender, event_type, content) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(stream_id)
        .bind(user)
        .bind(device)
        .bind(sender)
        .bind(event_type)
        .bind(content)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// To-device messages for a device up to `to`: (sender, type, content).
pub async fn to_device_for<'e>(
    e: impl Exec<'e>,
    user_id: &str,
    device_id: &str,
    to: i64,
    limit: i64,
) -> Result<Vec<(String, String, String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT sender, event_type, content, stream_id FROM to_device WHERE user_id = $1 AND device_id = $2 \
         AND stream_id <= $3 ORDER BY stream_id LIMIT $4",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(to)
    .bind(limit)
    .fetch_all(e)
    .await?)
}

/// Deletes the messages a device acknowledged by syncing past them.
pub async fn ack_to_device<'e>(e: impl Exec<'e>, user_id: &str, device_id: &str, up_to: i64) -> Result<()> {
    sqlx::query("DELETE FROM to_device WHERE user_id = $1 AND device_id = $2 AND stream_id <= $3")
        .bind(user_id)
        .bind(device_id)
        .bind(up_to)
        .execute(e)
        .await?;
    Ok(())
}

/// Records a to-device transaction id; false when it was already used.
pub async fn use_to_device_txn(conn: &mut Connection, user_id: &str, device_id: &str, txn_id: &str) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO to_device_txns (user_id, device_id, txn_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(txn_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn cross_signing_key<'e>(e: impl Exec<'e>, user_id: &str, key_type: &str) -> Result<Option<String>> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT json FROM cross_signing_keys WHERE user_id = $1 AND key_type = $2")
            .bind(user_id)
            .bind(key_type)
            .fetch_optional(e)
            .await?;
    Ok(row.map(|(j,)| j))
}

pub async fn set_cross_signing_key(conn: &mut Connection, user_id: &str, key_type: &str, json: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO cross_signing_keys (user_id, key_type, json) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id, key_type) DO UPDATE SET json = excluded.json",
    )
    .bind(user_id)
    .bind(key_type)
    .bind(json)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn add_cross_signing_signature<'e>(
    e: impl Exec<'e>,
    signer: &str,
    (target_user, target_key_id): (&str, &str),
    signing_key_id: &str,
    signature: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO cross_signing_signatures (signer, target_user, target_key_id, signing_key_id, signature) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (signer, target_user, target_key_id, signing_key_id) \
         DO UPDATE SET signature = excluded.signature",
    )
    .bind(signer)
    .bind(target_user)
    .bind(target_key_id)
    .bind(signing_key_id)
    .bind(signature)
    .execute(e)
    .await?;
    Ok(())
}

/// Signatures `signer` made over `target_user`'s keys: (key id signed, signing key id, signature).
pub async fn cross_signing_signatures<'e>(
    e: impl Exec<'e>,
    signer: &str,
    target_user: &str,
) -> Result<Vec<(String, String, String)>> {
    Ok(sqlx::query_as(
        "SELECT target_key_id, signing_key_id, signature FROM cross_signing_signatures \
         WHERE signer = $1 AND target_user = $2",
    )
    .bind(signer)
    .bind(target_user)
    .fetch_all(e)
    .await?)
}

/// The current (latest, not deleted) backup: (version, algorithm JSON, etag).
pub async fn current_backup<'e>(e: impl Exec<'e>, user_id: &str) -> Result<Option<(i64, String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT version, algorithm, etag FROM backup_versions WHERE user_id = $1 AND deleted = 0 \
         ORDER BY version DESC LIMIT 1",
    )
    .bind(user_id)
    .fetch_optional(e)
    .await?)
}

pub async fn backup_version<'e>(e: impl Exec<'e>, user_id: &str, version: i64) -> Result<Option<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT algorithm, etag FROM backup_versions WHERE user_id = $1 AND version = $2 AND deleted = 0",
    )
    .bind(user_id)
    .bind(version)
    .fetch_optional(e)
    .await?)
}

/// Creates the next backup version and returns it.
pub async fn create_backup(conn: &mut Connection, user_id: &str, algorithm: &str) -> Result<i64> {
    let row: (Option<i64>,) = sqlx::query_as("SELECT MAX(version) FROM backup_versions WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(&mut *conn)
        .await?;
    let version = row.0.unwrap_or(0) + 1;
    sqlx::query("INSERT INTO backup_versions (user_id, version, algorithm, etag) VALUES ($1, $2, $3, 0)")
        .bind(user_id)
        .bind(version)
        .bind(algorithm)
        .execute(conn)
        .await?;
    Ok(version)
}

pub async fn update_backup<'e>(e: impl Exec<'e>, user_id: &str, version: i64, algorithm: &str) -> Result<()> {
    sqlx::query("UPDATE backup_versions SET algorithm = $1 WHERE user_id = $2 AND version = $3")
        .bind(algorithm)
        .bind(user_id)
        .bind(version)
        .execute(e)
        .await?;
    Ok(())
}

/// Marks a backup deleted and drops its keys; false when there was no such backup.
pub async fn delete_backup(conn: &mut Connection, user_id: &str, version: i64) -> Result<bool> {
    let done =
        sqlx::query("UPDATE backup_versions SET deleted = 1 WHERE user_id = $1 AND version = $2 AND deleted = 0")
            .bind(user_id)
            .bind(version)
            .execute(&mut *conn)
            .await?;
    sqlx::query("DELETE FROM backup_keys WHERE user_id = $1 AND version = $2")
        .bind(user_id)
        .bind(version)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Bumps a backup's etag (every change to its keys).
pub async fn bump_backup_etag<'e>(e: impl Exec<'e>, user_id: &str, version: i64) -> Result<()> {
    sqlx::query("UPDATE backup_versions SET etag = etag + 1 WHERE user_id = $1 AND version = $2")
        .bind(user_id)
        .bind(version)
        .execute(e)
        .await?;
    Ok(())
}

pub async fn backup_key<'e>(
    e: impl Exec<'e>,
    user_id: &str,
    version: i64,
    room_id: &str,
    session_id: &str,
) -> Result<Option<String>> {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT json FROM backup_keys WHERE user_id = $1 AND version = $2 AND room_id = $3 AND session_id = $4",
    )
    .bind(user_id)
    .bind(version)
    .bind(room_id)
    .bind(session_id)
    .fetch_optional(e)
    .await?;
    Ok(row.map(|(j,)| j))
}

pub async fn set_backup_key(
    conn: &mut Connection,
    user_id: &str,
    version: i64,
    (room_id, session_id): (&str, &str),
    json: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO backup_keys (user_id, version, room_id, session_id, json) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET json = excluded.json",
    )
    .bind(user_id)
    .bind(version)
    .bind(room_id)
    .bind(session_id)
    .bind(json)
    .execute(conn)
    .await?;
    Ok(())
}

/// Backed-up keys, optionally of one room and one session: (room id, session id, JSON).
pub async fn backup_keys<'e>(
    e: impl Exec<'e>,
    user_id: &str,
    version: i64,
    room_id: Option<&str>,
    session_id: Option<&str>,
) -> Result<Vec<(String, String, String)>> {
    Ok(sqlx::query_as(
        "SELECT room_id, session_id, json FROM backup_keys WHERE user_id = $1 AND version = $2 \
         AND ($3 IS NULL OR room_id = $3) AND ($4 IS NULL OR session_id = $4) ORDER BY room_id, session_id",
    )
    .bind(user_id)
    .bind(version)
    .bind(room_id)
    .bind(session_id)
    .fetch_all(e)
    .await?)
}

pub async fn delete_backup_keys<'e>(
    e: impl Exec<'e>,
    user_id: &str,
    version: i64,
    room_id: Option<&str>,
    session_id: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "DELETE FROM backup_keys WHERE user_id = $1 AND version = $2 AND ($3 IS NULL OR room_id = $3) \
         AND ($4 IS NULL OR session_id = $4)",
    )
    .bind(user_id)
    .bind(version)
    .bind(room_id)
    .bind(session_id)
    .execute(e)
    .await?;
    Ok(())
}

pub async fn backup_count<'e>(e: impl Exec<'e>, user_id: &str, version: i64) -> Result<i64> {
    let row: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM backup_keys WHERE user_id = $1 AND version = $2")
        .bind(user_id)
        .bind(version)
        .fetch_one(e)
        .await?;
    Ok(row.0)
}

/// The user's dehydrated device: (device id, device data JSON).
pub async fn dehydrated_device<'e>(e: impl Exec<'e>, user_id: &str) -> Result<Option<(String, String)>> {
    Ok(sqlx::query_as("SELECT device_id, device_data FROM dehydrated_devices WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(e)
        .await?)
}

pub async fn set_dehydrated_device(conn: &mut Connection, user_id: &str, device_id: &str, data: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO dehydrated_devices (user_id, device_id, device_data) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id) DO UPDATE SET device_id = excluded.device_id, device_data = excluded.device_data",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(data)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn delete_dehydrated_device(conn: &mut Connection, user_id: &str) -> Result<()> {
    sqlx::query("DELETE FROM dehydrated_devices WHERE user_id = $1").bind(user_id).execute(conn).await?;
    Ok(())
}

/// Devices with to-device messages waiting: (user id, device id).
pub async fn devices_with_to_device<'e>(e: impl Exec<'e>) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as("SELECT DISTINCT user_id, device_id FROM to_device").fetch_all(e).await?)
}

/// The position of `user_id`'s last device list change that other servers were told of (not a
/// signature only its signer hears of) before `before`, if any.
pub async fn user_device_list_change_before<'e>(e: impl Exec<'e>, user_id: &str, before: i64) -> Result<Option<i64>> {
    let row: (Option<i64>,) = sqlx::query_as(
        "SELECT MAX(stream_id) FROM device_list_changes WHERE user_id = $1 AND visible_to IS NULL AND stream_id < $2",
    )
    .bind(user_id)
    .bind(before)
    .fetch_one(e)
    .await?;
    Ok(row.0)
}

/// The last position of the device list stream (0 when empty).
pub async fn last_device_list_change<'e>(e: impl Exec<'e>) -> Result<i64> {
    let row: (Option<i64>,) = sqlx::query_as("SELECT MAX(stream_id) FROM device_list_changes").fetch_one(e).await?;
    Ok(row.0.unwrap_or(0))
}
