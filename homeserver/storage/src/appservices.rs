//! Application services: the events waiting to be pushed to each, and the rooms each lists in
//! its own room directory.

use crate::{Exec, Result};

/// Queues events for services, in the transaction that stores them: (service, position, event id).
pub async fn enqueue(conn: &mut crate::Connection, items: &[(&str, i64, &str)]) -> Result<()> {
    let head = "INSERT INTO appservice_outbox (appservice, position, event_id)";
    crate::insert_rows(conn, head, 3, items, |q, (service, position, event_id)| {
        q.bind(*service).bind(*position).bind(*event_id)
    })
    .await
}

/// The oldest events waiting for `service`: (position, event id).
pub async fn outbox<'e>(e: impl Exec<'e>, service: &str, limit: i64) -> Result<Vec<(i64, String)>> {
    Ok(sqlx::query_as(
        "SELECT position, event_id FROM appservice_outbox WHERE appservice = $1 ORDER BY position LIMIT $2",
    )
    .bind(service)
    .bind(limit)
    .fetch_all(e)
    .await?)
}

/// Removes what `service` acknowledged, up to `up_to`.
pub async fn delivered<'e>(e: impl Exec<'e>, service: &str, up_to: i64) -> Result<()> {
    sqlx::query("DELETE FROM appservice_outbox WHERE appservice = $1 AND position <= $2")
        .bind(service)
        .bind(up_to)
        .execute(e)
        .await?;
    Ok(())
}

/// Lists `room_id` in `service`'s list for `network_id`, or takes it off.
pub async fn set_listed<'e>(
    e: impl Exec<'e>,
    service: &str,
    network_id: &str,
    room_id: &str,
    listed: bool,
) -> Result<()> {
    let query = if listed {
        "INSERT INTO appservice_room_list (appservice, network_id, room_id) VALUES ($1, $2, $3) \
         ON CONFLICT (appservice, network_id, room_id) DO NOTHING"
    } else {
        "DELETE FROM appservice_room_list WHERE appservice = $1 AND network_id = $2 AND room_id = $3"
    };
    sqlx::query(query).bind(service).bind(network_id).bind(room_id).execute(e).await?;
    Ok(())
}

/// The rooms of one service's list for one network, or of every service's lists (`None`).
pub async fn listed_rooms<'e>(e: impl Exec<'e>, list: Option<(&str, &str)>) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = match list {
        Some((service, network_id)) => {
            sqlx::query_as(
                "SELECT room_id FROM appservice_room_list WHERE appservice = $1 AND network_id = $2 ORDER BY room_id",
            )
            .bind(service)
            .bind(network_id)
            .fetch_all(e)
            .await?
        }
        None => {
            sqlx::query_as("SELECT DISTINCT room_id FROM appservice_room_list ORDER BY room_id").fetch_all(e).await?
        }
    };
    Ok(rows.into_iter().map(|r| r.0).collect())
}
