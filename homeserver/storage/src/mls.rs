//! MLS groups of DR rooms (the delivery service's state): key packages, each group's public
//! state and epoch, the handshake messages in their accepted order. Binary MLS structures are
//! stored base64-encoded, as the API carries them.

use crate::{Connection, Exec, Result};

/// Stores key packages of a device: (reference, last resort, key package). A device has one
/// last-resort key package at most: a new one replaces the old. A reference already stored
/// is kept as it was.
pub async fn add_key_packages(
    conn: &mut Connection,
    user_id: &str,
    device_id: &str,
    packages: &[(String, bool, String)],
    ts: i64,
) -> Result<()> {
    if packages.iter().any(|(_, last_resort, _)| *last_resort) {
        sqlx::query("DELETE FROM mls_key_packages WHERE user_id = $1 AND device_id = $2 AND last_resort = 1")
            .bind(user_id)
            .bind(device_id)
            .execute(&mut *conn)
            .await?;
    }
    for (reference, last_resort, package) in packages {
        sqlx::query(
            "INSERT INTO mls_key_packages (user_id, device_id, reference, last_resort, key_package, uploaded_ts) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_id, device_id, reference) DO NOTHING",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(reference)
        .bind(i64::from(*last_resort))
        .bind(package)
        .bind(ts)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// How many one-time (not last-resort) key packages a device has left.
pub async fn key_package_count<'e>(e: impl Exec<'e>, user_id: &str, device_id: &str) -> Result<i64> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM mls_key_packages WHERE user_id = $1 AND device_id = $2 AND last_resort = 0",
    )
    .bind(user_id)
    .bind(device_id)
    .fetch_one(e)
    .await?;
    Ok(n)
}

/// Takes a device's oldest one-time key package (removing it), or else its last-resort one
/// (kept).
pub async fn claim_key_package(conn: &mut Connection, user_id: &str, device_id: &str) -> Result<Option<String>> {
    let taken: Option<(String,)> = sqlx::query_as(
        "DELETE FROM mls_key_packages WHERE user_id = $1 AND device_id = $2 AND reference IN \
         (SELECT reference FROM mls_key_packages WHERE user_id = $1 AND device_id = $2 AND last_resort = 0 \
          ORDER BY uploaded_ts, reference LIMIT 1) RETURNING key_package",
    )
    .bind(user_id)
    .bind(device_id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((package,)) = taken {
        return Ok(Some(package));
    }
    let kept: Option<(String,)> = sqlx::query_as(
        "SELECT key_package FROM mls_key_packages WHERE user_id = $1 AND device_id = $2 AND last_resort = 1",
    )
    .bind(user_id)
    .bind(device_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(kept.map(|(p,)| p))
}

/// A room's group: (epoch, saved public state).
pub async fn group<'e>(e: impl Exec<'e>, room_id: &str) -> Result<Option<(i64, String)>> {
    Ok(sqlx::query_as("SELECT epoch, state FROM mls_groups WHERE room_id = $1").bind(room_id).fetch_optional(e).await?)
}

/// The handshakes logged so far in a group's (`g`) current epoch: its server's proposals.
const PROPOSALS_OF_EPOCH: &str =
    "(SELECT COUNT(*) FROM mls_handshakes h WHERE h.room_id = g.room_id AND h.epoch = g.epoch)";

/// What identifies a group's state without reading it: its epoch and how many handshakes
/// (the server's proposals) that epoch has so far. Every change of the state changes one.
pub async fn group_version<'e>(e: impl Exec<'e>, room_id: &str) -> Result<Option<(i64, i64)>> {
    let sql = format!("SELECT g.epoch, {PROPOSALS_OF_EPOCH} FROM mls_groups g WHERE g.room_id = $1");
    Ok(sqlx::query_as(&sql).bind(room_id).fetch_optional(e).await?)
}

/// A room's group with its version: (epoch, handshakes of that epoch, saved public state),
/// read at once.
pub async fn group_with_version<'e>(e: impl Exec<'e>, room_id: &str) -> Result<Option<(i64, i64, String)>> {
    let sql = format!("SELECT g.epoch, {PROPOSALS_OF_EPOCH}, g.state FROM mls_groups g WHERE g.room_id = $1");
    Ok(sqlx::query_as(&sql).bind(room_id).fetch_optional(e).await?)
}

/// Starts tracking a room's group; false if it already has one.
pub async fn insert_group(conn: &mut Connection, room_id: &str, epoch: i64, state: &str, ts: i64) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO mls_groups (room_id, epoch, state, created_ts) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (room_id) DO NOTHING",
    )
    .bind(room_id)
    .bind(epoch)
    .bind(state)
    .bind(ts)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Replaces a group's state if it is still at `epoch` (the compare-and-set that makes one
/// commit per epoch hold across connections); false if it moved.
pub async fn update_group(
    conn: &mut Connection,
    room_id: &str,
    epoch: i64,
    new_epoch: i64,
    state: &str,
) -> Result<bool> {
    let done = sqlx::query("UPDATE mls_groups SET epoch = $1, state = $2 WHERE room_id = $3 AND epoch = $4")
        .bind(new_epoch)
        .bind(state)
        .bind(room_id)
        .bind(epoch)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Sets the signed GroupInfo of a group's current epoch (none: unknown for this epoch).
pub async fn set_group_info(conn: &mut Connection, room_id: &str, group_info: Option<&str>) -> Result<()> {
    sqlx::query("UPDATE mls_groups SET group_info = $1 WHERE room_id = $2")
        .bind(group_info)
        .bind(room_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The signed GroupInfo of a group's current epoch, if its last committer gave it.
pub async fn group_info<'e>(e: impl Exec<'e>, room_id: &str) -> Result<Option<String>> {
    let row: Option<(Option<String>,)> =
        sqlx::query_as("SELECT group_info FROM mls_groups WHERE room_id = $1").bind(room_id).fetch_optional(e).await?;
    Ok(row.and_then(|(info,)| info))
}

/// One handshake message of a group, in the order accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub epoch: i64,
    pub seq: i64,
    /// `commit` or `proposal`.
    pub kind: String,
    pub sender: String,
    pub message: String,
}

/// Appends a handshake message to a group's log.
pub async fn add_handshake(
    conn: &mut Connection,
    room_id: &str,
    epoch: i64,
    kind: &str,
    sender: &str,
    message: &str,
    ts: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO mls_handshakes (room_id, epoch, seq, kind, sender, message, ts) \
         SELECT $1, $2, COALESCE(MAX(seq) + 1, 0), $3, $4, $5, $6 FROM mls_handshakes WHERE room_id = $1 AND epoch = $2",
    )
    .bind(room_id)
    .bind(epoch)
    .bind(kind)
    .bind(sender)
    .bind(message)
    .bind(ts)
    .execute(conn)
    .await?;
    Ok(())
}

/// A group's handshake messages made in epochs `from` and later, in order, at most `limit`.
pub async fn handshakes_since<'e>(e: impl Exec<'e>, room_id: &str, from: i64, limit: i64) -> Result<Vec<Handshake>> {
    let rows: Vec<(i64, i64, String, String, String)> = sqlx::query_as(
        "SELECT epoch, seq, kind, sender, message FROM mls_handshakes WHERE room_id = $1 AND epoch >= $2 \
         ORDER BY epoch, seq LIMIT $3",
    )
    .bind(room_id)
    .bind(from)
    .bind(limit)
    .fetch_all(e)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(epoch, seq, kind, sender, message)| Handshake { epoch, seq, kind, sender, message })
        .collect())
}

/// Records removals to ask a partner's orderer for: (server, room, user, device).
pub async fn add_revocations(conn: &mut Connection, rows: &[(String, String, String, String)], ts: i64) -> Result<()> {
    crate::insert_rows_with_tail(
        conn,
        "INSERT INTO mls_revocations (server, room_id, user_id, device_id, ts)",
        5,
        rows,
        " ON CONFLICT (server, room_id, user_id, device_id) DO NOTHING",
        |q, (server, room_id, user_id, device_id)| q.bind(server).bind(room_id).bind(user_id).bind(device_id).bind(ts),
    )
    .await
}

/// The removals still to ask for, oldest first: (server, room, user, device).
pub async fn pending_revocations<'e>(e: impl Exec<'e>, limit: i64) -> Result<Vec<(String, String, String, String)>> {
    Ok(sqlx::query_as(
        "SELECT server, room_id, user_id, device_id FROM mls_revocations ORDER BY ts, server, room_id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(e)
    .await?)
}

/// Forgets removals the orderer took.
pub async fn delete_revocations(conn: &mut Connection, rows: &[(String, String, String, String)]) -> Result<()> {
    for (server, room_id, user_id, device_id) in rows {
        sqlx::query(
            "DELETE FROM mls_revocations WHERE server = $1 AND room_id = $2 AND user_id = $3 AND device_id = $4",
        )
        .bind(server)
        .bind(room_id)
        .bind(user_id)
        .bind(device_id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
