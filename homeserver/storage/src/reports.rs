//! Reports of events, rooms and users (client-server spec, "Reporting content").

use crate::{Exec, Result};

/// A report as stored.
#[derive(Clone, Debug)]
pub struct Report {
    pub id: i64,
    pub kind: String,
    pub reporter: String,
    pub room_id: Option<String>,
    pub event_id: Option<String>,
    pub target_user: Option<String>,
    pub reason: Option<String>,
    pub score: Option<i64>,
    pub received_ts: i64,
}

type Row = (i64, String, String, Option<String>, Option<String>, Option<String>, Option<String>, Option<i64>, i64);

fn from_row(r: Row) -> Report {
    let (id, kind, reporter, room_id, event_id, target_user, reason, score, received_ts) = r;
    Report { id, kind, reporter, room_id, event_id, target_user, reason, score, received_ts }
}

const COLUMNS: &str = "id, kind, reporter, room_id, event_id, target_user, reason, score, received_ts";

/// Records a report under the next report id (in the caller's transaction); answers the id.
pub async fn insert(conn: &mut crate::Connection, report: &Report) -> Result<i64> {
    let id = crate::streams::next_counter(conn, "reports").await?;
    sqlx::query(&format!("INSERT INTO reports ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"))
        .bind(id)
        .bind(&report.kind)
        .bind(&report.reporter)
        .bind(&report.room_id)
        .bind(&report.event_id)
        .bind(&report.target_user)
        .bind(&report.reason)
        .bind(report.score)
        .bind(report.received_ts)
        .execute(&mut *conn)
        .await?;
    Ok(id)
}

/// Reports, newest first, below id `before`; of one kind and one room when given.
pub async fn list<'e>(
    e: impl Exec<'e>,
    kind: Option<&str>,
    room_id: Option<&str>,
    before: i64,
    limit: i64,
) -> Result<Vec<Report>> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM reports WHERE ($1 IS NULL OR kind = $1) AND ($2 IS NULL OR room_id = $2) \
         AND id < $3 ORDER BY id DESC LIMIT $4"
    ))
    .bind(kind)
    .bind(room_id)
    .bind(before)
    .bind(limit)
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// How many reports [`list`] would give without bounds.
pub async fn count<'e>(e: impl Exec<'e>, kind: Option<&str>, room_id: Option<&str>) -> Result<i64> {
    let row: (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM reports WHERE ($1 IS NULL OR kind = $1) AND ($2 IS NULL OR room_id = $2)")
            .bind(kind)
            .bind(room_id)
            .fetch_one(e)
            .await?;
    Ok(row.0)
}

pub async fn get<'e>(e: impl Exec<'e>, id: i64) -> Result<Option<Report>> {
    let row: Option<Row> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM reports WHERE id = $1")).bind(id).fetch_optional(e).await?;
    Ok(row.map(from_row))
}

/// Removes a report (an administrator dealt with it); answers whether it was there.
pub async fn delete<'e>(e: impl Exec<'e>, id: i64) -> Result<bool> {
    Ok(sqlx::query("DELETE FROM reports WHERE id = $1").bind(id).execute(e).await?.rows_affected() > 0)
}
