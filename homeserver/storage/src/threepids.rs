//! The e-mail addresses and phone numbers of accounts (`/account/3pid`).

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
