//! Crisis cells: the cells, their rooms, their sealed log and their situation reports.

use crate::{Exec, Result};

/// A cell as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    pub cell_id: String,
    pub slug: String,
    pub name: String,
    pub template: String,
    pub coordinator: String,
    pub status: String,
    pub created_ts: i64,
    pub stood_down_ts: Option<i64>,
    pub retention: String,
    pub closing_record: Option<String>,
    pub archive_status: Option<String>,
}

type CellRow =
    (String, String, String, String, String, String, i64, Option<i64>, String, Option<String>, Option<String>);

const CELL_COLUMNS: &str = "cell_id, slug, name, template, coordinator, status, created_ts, stood_down_ts, \
                            retention, closing_record, archive_status";

fn cell(r: CellRow) -> Cell {
    Cell {
        cell_id: r.0,
        slug: r.1,
        name: r.2,
        template: r.3,
        coordinator: r.4,
        status: r.5,
        created_ts: r.6,
        stood_down_ts: r.7,
        retention: r.8,
        closing_record: r.9,
        archive_status: r.10,
    }
}

/// A room of a cell: its id, its key in the template, its role.
#[derive(Clone, Debug, PartialEq)]
pub struct CellRoom {
    pub room_id: String,
    pub key: String,
    pub role: String,
}

/// Records a new cell and its rooms (one transaction: a cell is whole or absent).
pub async fn insert_cell(conn: &mut crate::Connection, c: &Cell, rooms: &[CellRoom]) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO crisis_cells ({CELL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    ))
    .bind(&c.cell_id)
    .bind(&c.slug)
    .bind(&c.name)
    .bind(&c.template)
    .bind(&c.coordinator)
    .bind(&c.status)
    .bind(c.created_ts)
    .bind(c.stood_down_ts)
    .bind(&c.retention)
    .bind(&c.closing_record)
    .bind(&c.archive_status)
    .execute(&mut *conn)
    .await?;
    for (position, r) in rooms.iter().enumerate() {
        sqlx::query(
            "INSERT INTO crisis_rooms (room_id, cell_id, room_key, role, position) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&r.room_id)
        .bind(&c.cell_id)
        .bind(&r.key)
        .bind(&r.role)
        .bind(position as i64)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

pub async fn cell_by_id<'e>(e: impl Exec<'e>, cell_id: &str) -> Result<Option<Cell>> {
    let row: Option<CellRow> = sqlx::query_as(&format!("SELECT {CELL_COLUMNS} FROM crisis_cells WHERE cell_id = $1"))
        .bind(cell_id)
        .fetch_optional(e)
        .await?;
    Ok(row.map(cell))
}

pub async fn slug_taken<'e>(e: impl Exec<'e>, slug: &str) -> Result<bool> {
    let row: Option<(i64,)> =
        sqlx::query_as("SELECT 1 FROM crisis_cells WHERE slug = $1").bind(slug).fetch_optional(e).await?;
    Ok(row.is_some())
}

/// The cell a room belongs to, with the room's key and role.
pub async fn room<'e>(e: impl Exec<'e>, room_id: &str) -> Result<Option<(String, CellRoom)>> {
    let row: Option<(String, String, String, String)> =
        sqlx::query_as("SELECT cell_id, room_id, room_key, role FROM crisis_rooms WHERE room_id = $1")
            .bind(room_id)
            .fetch_optional(e)
            .await?;
    Ok(row.map(|(cell, room_id, key, role)| (cell, CellRoom { room_id, key, role })))
}

/// A cell's rooms, in the template's order.
pub async fn rooms<'e>(e: impl Exec<'e>, cell_id: &str) -> Result<Vec<CellRoom>> {
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT room_id, room_key, role FROM crisis_rooms WHERE cell_id = $1 ORDER BY position")
            .bind(cell_id)
            .fetch_all(e)
            .await?;
    Ok(rows.into_iter().map(|(room_id, key, role)| CellRoom { room_id, key, role }).collect())
}

/// Takes the next value of a named counter (1 the first time). As the first statement of a
/// transaction, it takes SQLite's write lock at once, so the reads that follow cannot be
/// overtaken by another writer.
async fn next_in(conn: &mut crate::Connection, name: &str) -> Result<i64> {
    let (value,): (i64,) = sqlx::query_as(
        "INSERT INTO counters (name, value) VALUES ($1, 1) \
         ON CONFLICT (name) DO UPDATE SET value = counters.value + 1 RETURNING value",
    )
    .bind(name)
    .fetch_one(&mut *conn)
    .await?;
    Ok(value)
}

/// Appends a sealed entry to a cell's log under the next number, in the caller's transaction;
/// answers the number and the record, or `None` when the event already has its entry (the
/// caller then rolls back).
pub async fn append_log(
    conn: &mut crate::Connection,
    cell_id: &str,
    event_id: &str,
    author: &str,
    ts: i64,
    record_of: impl FnOnce(i64) -> std::result::Result<String, String>,
) -> Result<Option<(i64, String)>> {
    let number = next_in(conn, &format!("crisis_log:{cell_id}")).await?;
    let known: Option<(i64,)> = sqlx::query_as("SELECT number FROM crisis_log WHERE event_id = $1")
        .bind(event_id)
        .fetch_optional(&mut *conn)
        .await?;
    if known.is_some() {
        return Ok(None);
    }
    let record = record_of(number).map_err(sqlx::Error::Protocol)?;
    sqlx::query(
        "INSERT INTO crisis_log (cell_id, number, event_id, author, record, ts) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(cell_id)
    .bind(number)
    .bind(event_id)
    .bind(author)
    .bind(&record)
    .bind(ts)
    .execute(&mut *conn)
    .await?;
    Ok(Some((number, record)))
}

/// A cell's log entries (their signed records), in order.
pub async fn log<'e>(e: impl Exec<'e>, cell_id: &str) -> Result<Vec<(i64, String, String)>> {
    let rows: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT number, author, record FROM crisis_log WHERE cell_id = $1 ORDER BY number")
            .bind(cell_id)
            .fetch_all(e)
            .await?;
    Ok(rows)
}

/// Records a new version of a cell's situation report; answers its version.
pub async fn add_sitrep(
    conn: &mut crate::Connection,
    cell_id: &str,
    author: &str,
    body: &str,
    event_id: &str,
    ts: i64,
) -> Result<i64> {
    let version = next_in(conn, &format!("crisis_sitrep:{cell_id}")).await?;
    sqlx::query(
        "INSERT INTO crisis_sitreps (cell_id, version, author, body, event_id, ts) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(cell_id)
    .bind(version)
    .bind(author)
    .bind(body)
    .bind(event_id)
    .bind(ts)
    .execute(&mut *conn)
    .await?;
    Ok(version)
}

/// Every version of a cell's situation report, oldest first: (version, author, body, event, ts).
pub async fn sitreps<'e>(e: impl Exec<'e>, cell_id: &str) -> Result<Vec<(i64, String, String, String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT version, author, body, event_id, ts FROM crisis_sitreps WHERE cell_id = $1 ORDER BY version",
    )
    .bind(cell_id)
    .fetch_all(e)
    .await?)
}

/// Stands a cell down with its closed log's record; false when it was not active.
pub async fn stand_down<'e>(e: impl Exec<'e>, cell_id: &str, ts: i64, closing_record: &str) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE crisis_cells SET status = 'stood_down', stood_down_ts = $2, closing_record = $3, \
         archive_status = 'pending' WHERE cell_id = $1 AND status = 'active'",
    )
    .bind(cell_id)
    .bind(ts)
    .bind(closing_record)
    .execute(e)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records where a stood-down cell's archiving stands (`pending`, then `exported`).
pub async fn set_archive_status<'e>(e: impl Exec<'e>, cell_id: &str, status: &str) -> Result<()> {
    sqlx::query("UPDATE crisis_cells SET archive_status = $2 WHERE cell_id = $1")
        .bind(cell_id)
        .bind(status)
        .execute(e)
        .await?;
    Ok(())
}
