//! Rooms, aliases, the public room directory, forgotten rooms.

use crate::{flag, Connection, Exec, Result};

#[derive(Clone, Debug)]
pub struct Room {
    pub room_id: String,
    pub room_version: String,
    pub creator: String,
    pub is_public: bool,
}

pub async fn insert_room(
    conn: &mut Connection,
    room_id: &str,
    room_version: &str,
    creator: &str,
    is_public: bool,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO rooms (room_id, room_version, creator, is_public, created_ts) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(room_id)
    .bind(room_version)
    .bind(creator)
    .bind(is_public as i64)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get_room<'e>(e: impl Exec<'e>, room_id: &str) -> Result<Option<Room>> {
    let row: Option<(String, String, String, i64)> =
        sqlx::query_as("SELECT room_id, room_version, creator, is_public FROM rooms WHERE room_id = $1")
            .bind(room_id)
            .fetch_optional(e)
            .await?;
    Ok(row.map(|r| Room { room_id: r.0, room_version: r.1, creator: r.2, is_public: flag(r.3) }))
}

pub async fn set_public<'e>(e: impl Exec<'e>, room_id: &str, is_public: bool) -> Result<()> {
    sqlx::query("UPDATE rooms SET is_public = $1 WHERE room_id = $2")
        .bind(is_public as i64)
        .bind(room_id)
        .execute(e)
        .await?;
    Ok(())
}

/// Room ids published in the directory, in a stable order.
pub async fn public_rooms<'e>(e: impl Exec<'e>) -> Result<Vec<String>> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT room_id FROM rooms WHERE is_public = 1 ORDER BY room_id").fetch_all(e).await?;
    Ok(rows.into_iter().map(|(r,)| r).collect())
}

pub async fn insert_alias<'e>(e: impl Exec<'e>, alias: &str, room_id: &str, creator: &str) -> Result<()> {
    sqlx::query("INSERT INTO room_aliases (alias, room_id, creator) VALUES ($1, $2, $3)")
        .bind(alias)
        .bind(room_id)
        .bind(creator)
        .execute(e)
        .await?;
    Ok(())
}

/// (room id, creator) of an alias.
pub async fn get_alias<'e>(e: impl Exec<'e>, alias: &str) -> Result<Option<(String, String)>> {
    Ok(sqlx::query_as("SELECT room_id, creator FROM room_aliases WHERE alias = $1")
        .bind(alias)
        .fetch_optional(e)
        .await?)
}

/// Aliases starting with `prefix`, with their rooms.
pub async fn aliases_with_prefix<'e>(e: impl Exec<'e>, prefix: &str) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as("SELECT alias, room_id FROM room_aliases WHERE alias LIKE $1 ESCAPE '\\' ORDER BY alias")
        .bind(format!("{}%", crate::accounts::like_escaped(prefix)))
        .fetch_all(e)
        .await?)
}

pub async fn delete_alias<'e>(e: impl Exec<'e>, alias: &str) -> Result<()> {
    sqlx::query("DELETE FROM room_aliases WHERE alias = $1").bind(alias).execute(e).await?;
    Ok(())
}

pub async fn room_aliases<'e>(e: impl Exec<'e>, room_id: &str) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias")
        .bind(room_id)
        .fetch_all(e)
        .await?;
    Ok(rows.into_iter().map(|(r,)| r).collect())
}

pub async fn forget<'e>(e: impl Exec<'e>, user_id: &str, room_id: &str) -> Result<()> {
    sqlx::query("INSERT INTO room_forgotten (user_id, room_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(user_id)
        .bind(room_id)
        .execute(e)
        .await?;
    Ok(())
}

pub async fn unforget<'e>(e: impl Exec<'e>, user_id: &str, room_id: &str) -> Result<()> {
    sqlx::query("DELETE FROM room_forgotten WHERE user_id = $1 AND room_id = $2")
        .bind(user_id)
        .bind(room_id)
        .execute(e)
        .await?;
    Ok(())
}

pub async fn forgotten_rooms<'e>(e: impl Exec<'e>, user_id: &str) -> Result<Vec<String>> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT room_id FROM room_forgotten WHERE user_id = $1").bind(user_id).fetch_all(e).await?;
    Ok(rows.into_iter().map(|(r,)| r).collect())
}

/// A room a device peeks into (MSC2753), from the stream position `since`.
#[derive(Clone, Debug)]
pub struct Peek {
    pub user_id: String,
    pub device_id: String,
    pub room_id: String,
    pub since: i64,
}

/// Records a peek, or moves an existing one's position.
pub async fn add_peek<'e>(e: impl Exec<'e>, peek: &Peek) -> Result<()> {
    sqlx::query(
        "INSERT INTO room_peeks (user_id, device_id, room_id, since) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (user_id, device_id, room_id) DO UPDATE SET since = excluded.since",
    )
    .bind(&peek.user_id)
    .bind(&peek.device_id)
    .bind(&peek.room_id)
    .bind(peek.since)
    .execute(e)
    .await?;
    Ok(())
}

/// Ends the peeks of a user's devices into a room (`device`: of that device only).
pub async fn remove_peeks<'e>(e: impl Exec<'e>, user_id: &str, device_id: Option<&str>, room_id: &str) -> Result<()> {
    sqlx::query("DELETE FROM room_peeks WHERE user_id = $1 AND room_id = $2 AND ($3 IS NULL OR device_id = $3)")
        .bind(user_id)
        .bind(room_id)
        .bind(device_id)
        .execute(e)
        .await?;
    Ok(())
}

/// Every peek, read at start-up.
pub async fn all_peeks<'e>(e: impl Exec<'e>) -> Result<Vec<Peek>> {
    let rows: Vec<(String, String, String, i64)> =
        sqlx::query_as("SELECT user_id, device_id, room_id, since FROM room_peeks").fetch_all(e).await?;
    Ok(rows
        .into_iter()
        .map(|(user_id, device_id, room_id, since)| Peek { user_id, device_id, room_id, since })
        .collect())
}
