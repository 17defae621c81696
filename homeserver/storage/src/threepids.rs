//! The e-mail addresses and phone numbers of accounts (`/account/3pid`), and the validation
//! sessions of the addresses this server validates itself.

use crate::{Exec, Result};

/// An address of an account.
#[derive(Clone, Debug)]
pub struct Threepid {
    pub medium: String,
    pub address: String,
    pub validated_at: i64,
    pub added_at: i64,
    /// The identity server it is bound on, if any.
    pub id_server: Option<String>,
}

type Row = (String, String, i64, i64, Option<String>);

fn from_row((medium, address, validated_at, added_at, id_server): Row) -> Threepid {
    Threepid { medium, address, validated_at, added_at, id_server }
}

pub async fn list<'e>(e: impl Exec<'e>, user_id: &str) -> Result<Vec<Threepid>> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT medium, address, validated_at, added_at, id_server FROM user_threepids \
         WHERE user_id = $1 ORDER BY added_at, medium, address",
    )
    .bind(user_id)
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// Records `user_id`'s address; an address another account held moves to this one (the
/// identity server that validated it says it is theirs now).
pub async fn upsert<'e>(e: impl Exec<'e>, user_id: &str, t: &Threepid) -> Result<()> {
    sqlx::query(
        "INSERT INTO user_threepids (medium, address, user_id, validated_at, added_at, id_server) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (medium, address) DO UPDATE SET \
         user_id = excluded.user_id, validated_at = excluded.validated_at, id_server = excluded.id_server",
    )
    .bind(&t.medium)
    .bind(&t.address)
    .bind(user_id)
    .bind(t.validated_at)
    .bind(t.added_at)
    .bind(&t.id_server)
    .execute(e)
    .await?;
    Ok(())
}

/// Removes `user_id`'s address; answers it as it was.
pub async fn delete<'e>(e: impl Exec<'e>, user_id: &str, medium: &str, address: &str) -> Result<Option<Threepid>> {
    let row: Option<Row> = sqlx::query_as(
        "DELETE FROM user_threepids WHERE user_id = $1 AND medium = $2 AND address = $3 \
         RETURNING medium, address, validated_at, added_at, id_server",
    )
    .bind(user_id)
    .bind(medium)
    .bind(address)
    .fetch_optional(e)
    .await?;
    Ok(row.map(from_row))
}

/// The account holding an address, if any.
pub async fn owner<'e>(e: impl Exec<'e>, medium: &str, address: &str) -> Result<Option<String>> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT user_id FROM user_threepids WHERE medium = $1 AND address = $2")
            .bind(medium)
            .bind(address)
            .fetch_optional(e)
            .await?;
    Ok(row.map(|(u,)| u))
}

/// A validation session of this server: the token mailed to an address.
#[derive(Clone, Debug)]
pub struct ValidationSession {
    pub session_id: String,
    pub client_secret: String,
    pub medium: String,
    pub address: String,
    pub token: String,
    pub send_attempt: i64,
    pub next_link: Option<String>,
    pub created_ts: i64,
    pub validated_ts: Option<i64>,
}

type SessionRow = (String, String, String, String, String, i64, Option<String>, i64, Option<i64>);

const SESSION_COLUMNS: &str =
    "session_id, client_secret, medium, address, token, send_attempt, next_link, created_ts, validated_ts";

fn session_from_row(r: SessionRow) -> ValidationSession {
    let (session_id, client_secret, medium, address, token, send_attempt, next_link, created_ts, validated_ts) = r;
    ValidationSession {
        session_id,
        client_secret,
        medium,
        address,
        token,
        send_attempt,
        next_link,
        created_ts,
        validated_ts,
    }
}

pub async fn insert_session<'e>(e: impl Exec<'e>, s: &ValidationSession) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO threepid_validation ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    ))
    .bind(&s.session_id)
    .bind(&s.client_secret)
    .bind(&s.medium)
    .bind(&s.address)
    .bind(&s.token)
    .bind(s.send_attempt)
    .bind(&s.next_link)
    .bind(s.created_ts)
    .bind(s.validated_ts)
    .execute(e)
    .await?;
    Ok(())
}

/// A session sent again (a new `send_attempt`): its new token and next link, from now on.
pub async fn renew_session<'e>(e: impl Exec<'e>, s: &ValidationSession) -> Result<()> {
    sqlx::query(
        "UPDATE threepid_validation SET token = $2, send_attempt = $3, next_link = $4, created_ts = $5 \
         WHERE session_id = $1",
    )
    .bind(&s.session_id)
    .bind(&s.token)
    .bind(s.send_attempt)
    .bind(&s.next_link)
    .bind(s.created_ts)
    .execute(e)
    .await?;
    Ok(())
}

/// The session of a client secret for an address, if one was opened.
pub async fn find_session<'e>(
    e: impl Exec<'e>,
    client_secret: &str,
    medium: &str,
    address: &str,
) -> Result<Option<ValidationSession>> {
    let row: Option<SessionRow> = sqlx::query_as(&format!(
        "SELECT {SESSION_COLUMNS} FROM threepid_validation \
         WHERE client_secret = $1 AND medium = $2 AND address = $3"
    ))
    .bind(client_secret)
    .bind(medium)
    .bind(address)
    .fetch_optional(e)
    .await?;
    Ok(row.map(session_from_row))
}

pub async fn get_session<'e>(e: impl Exec<'e>, session_id: &str) -> Result<Option<ValidationSession>> {
    let row: Option<SessionRow> =
        sqlx::query_as(&format!("SELECT {SESSION_COLUMNS} FROM threepid_validation WHERE session_id = $1"))
            .bind(session_id)
            .fetch_optional(e)
            .await?;
    Ok(row.map(session_from_row))
}

pub async fn mark_validated<'e>(e: impl Exec<'e>, session_id: &str, at: i64) -> Result<()> {
    sqlx::query("UPDATE threepid_validation SET validated_ts = $2 WHERE session_id = $1 AND validated_ts IS NULL")
        .bind(session_id)
        .bind(at)
        .execute(e)
        .await?;
    Ok(())
}
