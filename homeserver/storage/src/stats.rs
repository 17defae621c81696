//! What the portal's dashboards count: activity of rooms per day, correspondence sent and
//! received by a group, its journal's backlog, and the server's totals.

use crate::{Exec, Result};

/// The organisation's spaces (functional groups, communities): their ids and the JSON of their
/// `fr.diplomatie.group` state event.
pub async fn org_spaces<'e>(e: impl Exec<'e>) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT c.room_id, e.json FROM current_state c JOIN events e ON e.event_id = c.event_id \
         WHERE c.event_type = 'fr.diplomatie.group' AND c.state_key = '' ORDER BY c.room_id",
    )
    .fetch_all(e)
    .await?)
}

/// A space's children: (child room id, JSON of the `m.space.child` event).
pub async fn space_children<'e>(e: impl Exec<'e>, space: &str) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT c.state_key, e.json FROM current_state c JOIN events e ON e.event_id = c.event_id \
         WHERE c.room_id = $1 AND c.event_type = 'm.space.child' ORDER BY c.state_key",
    )
    .bind(space)
    .fetch_all(e)
    .await?)
}

/// Messages per day (days since the epoch, UTC) in these rooms since `since_ts`: (day, messages,
/// distinct senders), the system account's left out.
pub async fn daily_activity<'e>(
    e: impl Exec<'e>,
    rooms: &[String],
    since_ts: i64,
    system: &str,
) -> Result<Vec<(i64, i64, i64)>> {
    if rooms.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders: Vec<String> = (0..rooms.len()).map(|i| format!("${}", i + 3)).collect();
    let sql = format!(
        "SELECT origin_server_ts / 86400000, COUNT(*), COUNT(DISTINCT sender) FROM events \
         WHERE state_key IS NULL AND event_type IN ('m.room.message', 'm.room.encrypted') \
         AND origin_server_ts >= $1 AND sender <> $2 AND room_id IN ({}) \
         GROUP BY origin_server_ts / 86400000 ORDER BY 1",
        placeholders.join(", ")
    );
    let mut query = sqlx::query_as(&sql).bind(since_ts).bind(system);
    for room in rooms {
        query = query.bind(room);
    }
    Ok(query.fetch_all(e).await?)
}

/// The references of what a group sent since `since_ts`.
pub async fn sent_by<'e>(e: impl Exec<'e>, slug: &str, since_ts: i64) -> Result<Vec<String>> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT reference FROM correspondence WHERE group_slug = $1 AND ts >= $2 ORDER BY ts")
            .bind(slug)
            .bind(since_ts)
            .fetch_all(e)
            .await?;
    Ok(rows.into_iter().map(|(r,)| r).collect())
}

/// How many correspondences sent since `since_ts` reached the group, for action or information.
pub async fn received_by<'e>(e: impl Exec<'e>, slug: &str, since_ts: i64) -> Result<i64> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COUNT(DISTINCT d.reference) FROM correspondence_deliveries d \
         JOIN correspondence c ON c.reference = d.reference \
         WHERE d.group_slug = $1 AND d.role IN ('action', 'information') AND c.ts >= $2",
    )
    .bind(slug)
    .bind(since_ts)
    .fetch_one(e)
    .await?;
    Ok(n)
}

/// A group's action items by status: (status, count).
pub async fn backlog<'e>(e: impl Exec<'e>, slug: &str) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT status, COUNT(*) FROM correspondence_actions WHERE group_slug = $1 GROUP BY status ORDER BY status",
    )
    .bind(slug)
    .fetch_all(e)
    .await?)
}

/// The server's totals: (local accounts that are active, rooms, events).
pub async fn totals<'e, E: Exec<'e> + Copy>(e: E) -> Result<(i64, i64, i64)> {
    let (users,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users WHERE deactivated = 0").fetch_one(e).await?;
    let (rooms,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM rooms").fetch_one(e).await?;
    let (events,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM events").fetch_one(e).await?;
    Ok((users, rooms, events))
}
