//! Signature circuits, groups' signatories and delegations.

use crate::{Exec, Result};

/// A circuit as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Circuit {
    pub circuit_id: String,
    pub group_slug: String,
    pub drafter: String,
    pub draft: String,
    pub approvers: String,
    pub signatory: String,
    pub status: String,
    pub step: i64,
    pub chain: String,
    pub room_id: String,
    pub event_id: Option<String>,
    pub reference: Option<String>,
    pub created_ts: i64,
    pub updated_ts: i64,
}

type Row = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    i64,
    i64,
);

const COLUMNS: &str = "circuit_id, group_slug, drafter, draft, approvers, signatory, status, step, chain, room_id, \
                       event_id, reference, created_ts, updated_ts";

fn circuit(r: Row) -> Circuit {
    Circuit {
        circuit_id: r.0,
        group_slug: r.1,
        drafter: r.2,
        draft: r.3,
        approvers: r.4,
        signatory: r.5,
        status: r.6,
        step: r.7,
        chain: r.8,
        room_id: r.9,
        event_id: r.10,
        reference: r.11,
        created_ts: r.12,
        updated_ts: r.13,
    }
}

pub async fn insert<'e>(e: impl Exec<'e>, c: &Circuit) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO circuits ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
    ))
    .bind(&c.circuit_id)
    .bind(&c.group_slug)
    .bind(&c.drafter)
    .bind(&c.draft)
    .bind(&c.approvers)
    .bind(&c.signatory)
    .bind(&c.status)
    .bind(c.step)
    .bind(&c.chain)
    .bind(&c.room_id)
    .bind(c.event_id.as_deref())
    .bind(c.reference.as_deref())
    .bind(c.created_ts)
    .bind(c.updated_ts)
    .execute(e)
    .await?;
    Ok(())
}

pub async fn get<'e>(e: impl Exec<'e>, circuit_id: &str) -> Result<Option<Circuit>> {
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM circuits WHERE circuit_id = $1"))
        .bind(circuit_id)
        .fetch_optional(e)
        .await?;
    Ok(row.map(circuit))
}

pub async fn by_event<'e>(e: impl Exec<'e>, event_id: &str) -> Result<Option<Circuit>> {
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM circuits WHERE event_id = $1"))
        .bind(event_id)
        .fetch_optional(e)
        .await?;
    Ok(row.map(circuit))
}

/// Moves a circuit on, only from the state it was read in (`expected_updated_ts` and step):
/// false when another decision got there first.
pub async fn advance<'e>(e: impl Exec<'e>, c: &Circuit, expected_step: i64, expected_status: &str) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE circuits SET draft = $2, status = $3, step = $4, chain = $5, event_id = $6, reference = $7, \
         updated_ts = $8 WHERE circuit_id = $1 AND step = $9 AND status = $10",
    )
    .bind(&c.circuit_id)
    .bind(&c.draft)
    .bind(&c.status)
    .bind(c.step)
    .bind(&c.chain)
    .bind(c.event_id.as_deref())
    .bind(c.reference.as_deref())
    .bind(c.updated_ts)
    .bind(expected_step)
    .bind(expected_status)
    .execute(e)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn set_event<'e>(e: impl Exec<'e>, circuit_id: &str, event_id: &str) -> Result<()> {
    sqlx::query("UPDATE circuits SET event_id = $2 WHERE circuit_id = $1")
        .bind(circuit_id)
        .bind(event_id)
        .execute(e)
        .await?;
    Ok(())
}

/// A group's signatories: (user id, title).
pub async fn signatories<'e>(e: impl Exec<'e>, group_slug: &str) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as("SELECT user_id, title FROM group_signatories WHERE group_slug = $1 ORDER BY user_id")
        .bind(group_slug)
        .fetch_all(e)
        .await?)
}

/// Replaces a group's signatories (one transaction).
pub async fn set_signatories(conn: &mut crate::Connection, group_slug: &str, list: &[(String, String)]) -> Result<()> {
    sqlx::query("DELETE FROM group_signatories WHERE group_slug = $1").bind(group_slug).execute(&mut *conn).await?;
    for (user, title) in list {
        sqlx::query("INSERT INTO group_signatories (group_slug, user_id, title) VALUES ($1, $2, $3)")
            .bind(group_slug)
            .bind(user)
            .bind(title)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// A delegation: who acts for whom, from when until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delegation {
    pub delegation_id: String,
    pub delegator: String,
    pub delegate: String,
    pub from_ts: i64,
    pub until_ts: i64,
    pub created_ts: i64,
}

pub async fn insert_delegation<'e>(e: impl Exec<'e>, d: &Delegation) -> Result<()> {
    sqlx::query(
        "INSERT INTO delegations (delegation_id, delegator, delegate, from_ts, until_ts, created_ts) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&d.delegation_id)
    .bind(&d.delegator)
    .bind(&d.delegate)
    .bind(d.from_ts)
    .bind(d.until_ts)
    .bind(d.created_ts)
    .execute(e)
    .await?;
    Ok(())
}

/// The delegation in force at `ts` by which `delegate` acts for `delegator`, if any.
pub async fn delegation_at<'e>(
    e: impl Exec<'e>,
    delegator: &str,
    delegate: &str,
    ts: i64,
) -> Result<Option<Delegation>> {
    let row: Option<(String, String, String, i64, i64, i64)> = sqlx::query_as(
        "SELECT delegation_id, delegator, delegate, from_ts, until_ts, created_ts FROM delegations \
         WHERE delegator = $1 AND delegate = $2 AND from_ts <= $3 AND until_ts > $3 ORDER BY created_ts LIMIT 1",
    )
    .bind(delegator)
    .bind(delegate)
    .bind(ts)
    .fetch_optional(e)
    .await?;
    Ok(row.map(|r| Delegation {
        delegation_id: r.0,
        delegator: r.1,
        delegate: r.2,
        from_ts: r.3,
        until_ts: r.4,
        created_ts: r.5,
    }))
}
