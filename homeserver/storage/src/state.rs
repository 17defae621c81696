//! Room state: snapshots as delta chains (state groups) and the current state of each room.

use crate::{Connection, Exec, Result};

/// One (type, state key) -> event id entry of a state map.
pub type StateEntry = (String, String, String);

pub async fn insert_state_group(
    conn: &mut Connection,
    id: i64,
    room_id: &str,
    prev_group: Option<i64>,
    chain_length: i64,
    delta: &[(&str, &str, &str)],
) -> Result<()> {
    sqlx::query("INSERT INTO state_groups (id, room_id, prev_group, chain_length) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(room_id)
        .bind(prev_group)
        .bind(chain_length)
        .execute(&mut *conn)
        .await?;
    for (ty, key, event_id) in delta {
        sqlx::query(
            "INSERT INTO state_group_entries (state_group, event_type, state_key, event_id) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(*ty)
        .bind(*key)
        .bind(*event_id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// A group's whole delta chain in one query, from its snapshot (first) to the group itself
/// (last): `(group, entries of its delta)`. Empty when the group does not exist.
pub async fn get_state_chain<'e>(e: impl Exec<'e>, id: i64) -> Result<Vec<(i64, Vec<StateEntry>)>> {
    type ChainRow = (i64, i64, Option<String>, Option<String>, Option<String>);
    let rows: Vec<ChainRow> = sqlx::query_as(
        "WITH RECURSIVE chain (id, prev_group, depth) AS ( \
             SELECT id, prev_group, 0 FROM state_groups WHERE id = $1 \
             UNION ALL \
             SELECT g.id, g.prev_group, c.depth + 1 FROM state_groups g JOIN chain c ON g.id = c.prev_group) \
         SELECT c.id, c.depth, e.event_type, e.state_key, e.event_id FROM chain c \
         LEFT JOIN state_group_entries e ON e.state_group = c.id ORDER BY c.depth DESC",
    )
    .bind(id)
    .fetch_all(e)
    .await?;
    let mut chain: Vec<(i64, Vec<StateEntry>)> = Vec::new();
    for (group, _, ty, key, event) in rows {
        if chain.last().map(|(g, _)| *g) != Some(group) {
            chain.push((group, Vec::new()));
        }
        if let (Some(ty), Some(key), Some(event)) = (ty, key, event) {
            chain.last_mut().expect("pushed above").1.push((ty, key, event));
        }
    }
    Ok(chain)
}

pub async fn set_current_state(
    conn: &mut Connection,
    room_id: &str,
    (event_type, state_key, event_id): (&str, &str, &str),
    membership: Option<&str>,
    stream_ordering: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO current_state (room_id, event_type, state_key, event_id, membership, stream_ordering) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (room_id, event_type, state_key) DO UPDATE SET \
         event_id = excluded.event_id, membership = excluded.membership, \
         stream_ordering = excluded.stream_ordering",
    )
    .bind(room_id)
    .bind(event_type)
    .bind(state_key)
    .bind(event_id)
    .bind(membership)
    .bind(stream_ordering)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn current_state<'e>(e: impl Exec<'e>, room_id: &str) -> Result<Vec<StateEntry>> {
    Ok(sqlx::query_as("SELECT event_type, state_key, event_id FROM current_state WHERE room_id = $1")
        .bind(room_id)
        .fetch_all(e)
        .await?)
}

/// Rooms where `user_id`'s current membership is one of `memberships`: (room id, membership).
pub async fn rooms_for_user<'e>(e: impl Exec<'e>, user_id: &str) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT room_id, membership FROM current_state WHERE state_key = $1 \
         AND event_type = 'm.room.member'",
    )
    .bind(user_id)
    .fetch_all(e)
    .await?)
}

/// Members of a room with their current membership: (user id, membership, event id).
pub async fn room_members<'e>(e: impl Exec<'e>, room_id: &str) -> Result<Vec<(String, String, String)>> {
    Ok(sqlx::query_as(
        "SELECT state_key, membership, event_id FROM current_state WHERE room_id = $1 \
         AND event_type = 'm.room.member'",
    )
    .bind(room_id)
    .fetch_all(e)
    .await?)
}

/// Whether two users currently share a joined room.
pub async fn share_a_room<'e>(e: impl Exec<'e>, a: &str, b: &str) -> Result<bool> {
    let row: Option<(i64,)> = sqlx::query_as(
        "SELECT 1 FROM current_state x JOIN current_state y ON x.room_id = y.room_id \
         WHERE x.event_type = 'm.room.member' AND y.event_type = 'm.room.member' \
         AND x.state_key = $1 AND y.state_key = $2 AND x.membership = 'join' \
         AND y.membership = 'join' LIMIT 1",
    )
    .bind(a)
    .bind(b)
    .fetch_optional(e)
    .await?;
    Ok(row.is_some())
}

/// The highest state group id in use (0 when none).
pub async fn max_state_group<'e>(e: impl Exec<'e>) -> Result<i64> {
    let row: (Option<i64>,) = sqlx::query_as("SELECT MAX(id) FROM state_groups").fetch_one(e).await?;
    Ok(row.0.unwrap_or(0))
}

/// The chain length of a group (0 for unknown groups).
pub async fn chain_length<'e>(e: impl Exec<'e>, id: i64) -> Result<i64> {
    let row: Option<(i64,)> =
        sqlx::query_as("SELECT chain_length FROM state_groups WHERE id = $1").bind(id).fetch_optional(e).await?;
    Ok(row.map(|(v,)| v).unwrap_or(0))
}

/// Replaces the whole current state of a room (after state resolution merged forks).
/// Entries are (type, state key, event id, membership).
pub async fn replace_current_state(
    conn: &mut Connection,
    room_id: &str,
    entries: &[(&str, &str, &str, Option<&str>)],
    stream_ordering: i64,
) -> Result<()> {
    sqlx::query("DELETE FROM current_state WHERE room_id = $1").bind(room_id).execute(&mut *conn).await?;
    for (kind, key, event_id, membership) in entries {
        set_current_state(conn, room_id, (kind, key, event_id), *membership, stream_ordering).await?;
    }
    Ok(())
}

/// The current join rules and history visibility of every room: (room id, event type, the
/// event's JSON, from the timeline or from the outliers a join brought), for the user
/// directory's public rooms.
pub async fn rooms_openness<'e>(e: impl Exec<'e>) -> Result<Vec<(String, String, String)>> {
    Ok(sqlx::query_as(
        "SELECT c.room_id, c.event_type, COALESCE(v.json, o.json, '{}') FROM current_state c \
         LEFT JOIN events v ON v.event_id = c.event_id LEFT JOIN outliers o ON o.event_id = c.event_id \
         WHERE c.event_type IN ('m.room.join_rules', 'm.room.history_visibility') AND c.state_key = ''",
    )
    .fetch_all(e)
    .await?)
}

/// The joined members of `rooms` whose user id or membership event contains `term`
/// (lower-cased, matched as itself): (user id, the member event's JSON). The JSON is a coarse
/// match: the caller checks the display name.
pub async fn joined_members_matching<'e>(
    e: impl Exec<'e>,
    rooms: &[&str],
    term: &str,
) -> Result<Vec<(String, String)>> {
    if rooms.is_empty() {
        return Ok(Vec::new());
    }
    let marks: Vec<String> = (0..rooms.len()).map(|i| format!("${}", i + 2)).collect();
    let sql = format!(
        "SELECT c.state_key, COALESCE(v.json, o.json, '{{}}') FROM current_state c \
         LEFT JOIN events v ON v.event_id = c.event_id LEFT JOIN outliers o ON o.event_id = c.event_id \
         WHERE c.event_type = 'm.room.member' AND c.membership = 'join' AND c.room_id IN ({}) \
         AND (LOWER(c.state_key) LIKE $1 ESCAPE '\\' OR LOWER(COALESCE(v.json, o.json, '')) LIKE $1 ESCAPE '\\')",
        marks.join(", ")
    );
    let pattern = format!("%{}%", crate::accounts::like_escaped(term));
    let mut query = sqlx::query_as::<_, (String, String)>(&sql).persistent(false).bind(pattern);
    for room in rooms {
        query = query.bind(*room);
    }
    Ok(query.fetch_all(e).await?)
}
