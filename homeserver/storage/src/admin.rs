//! What the administration APIs read and write beyond the accounts' own queries: accounts
//! listed with filters and order, the administrator flag, and the audit log.

use crate::{accounts::like_escaped, flag, Exec, Result};

/// An account as the user list shows it.
#[derive(Clone, Debug)]
pub struct ListedUser {
    pub user_id: String,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
    pub is_admin: bool,
    pub is_guest: bool,
    pub deactivated: bool,
    pub erased: bool,
    pub created_ts: i64,
    /// `agent` or `external` (the portal's kind of account).
    pub account_kind: String,
}

type ListedRow = (String, Option<String>, Option<String>, i64, i64, i64, i64, i64, String);

const LISTED_COLUMNS: &str = "u.user_id, u.displayname, u.avatar_url, u.is_admin, u.is_guest, u.deactivated, \
     CASE WHEN e.user_id IS NULL THEN 0 ELSE 1 END, u.created_ts, u.account_kind";

fn listed(r: ListedRow) -> ListedUser {
    ListedUser {
        user_id: r.0,
        displayname: r.1,
        avatar_url: r.2,
        is_admin: flag(r.3),
        is_guest: flag(r.4),
        deactivated: flag(r.5),
        erased: flag(r.6),
        created_ts: r.7,
        account_kind: r.8,
    }
}

/// Which accounts a list holds, and in which order.
#[derive(Clone, Debug, Default)]
pub struct UserFilter {
    /// Contained in the user id (case-insensitive).
    pub user_id: Option<String>,
    /// Contained in the user id or the display name (case-insensitive).
    pub name: Option<String>,
    pub guests: bool,
    pub deactivated: bool,
    /// Only administrators (`true`), only others (`false`), or both.
    pub admins: Option<bool>,
    pub order: UserOrder,
    pub descending: bool,
}

/// The columns a user list may be ordered by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UserOrder {
    #[default]
    Name,
    DisplayName,
    CreationTs,
    Admin,
    Deactivated,
    Guest,
}

impl UserOrder {
    fn column(self) -> &'static str {
        match self {
            UserOrder::Name => "u.user_id",
            UserOrder::DisplayName => "COALESCE(u.displayname, '')",
            UserOrder::CreationTs => "u.created_ts",
            UserOrder::Admin => "u.is_admin",
            UserOrder::Deactivated => "u.deactivated",
            UserOrder::Guest => "u.is_guest",
        }
    }
}

/// A page of the accounts `filter` selects (`from` an offset), and how many it selects in all.
pub async fn list_users<'e, E: Exec<'e> + Copy>(
    e: E,
    filter: &UserFilter,
    from: i64,
    limit: i64,
) -> Result<(Vec<ListedUser>, i64)> {
    let mut clauses: Vec<&str> = Vec::new();
    if !filter.guests {
        clauses.push("u.is_guest = 0");
    }
    if !filter.deactivated {
        clauses.push("u.deactivated = 0");
    }
    match filter.admins {
        Some(true) => clauses.push("u.is_admin <> 0"),
        Some(false) => clauses.push("u.is_admin = 0"),
        None => {}
    }
    // The name filter wins over the user id filter (as Synapse's does).
    let pattern = match (&filter.name, &filter.user_id) {
        (Some(name), _) => {
            clauses.push(
                "(LOWER(u.user_id) LIKE $1 ESCAPE '\\' OR LOWER(COALESCE(u.displayname, '')) LIKE $1 ESCAPE '\\')",
            );
            Some(name)
        }
        (None, Some(id)) => {
            clauses.push("LOWER(u.user_id) LIKE $1 ESCAPE '\\'");
            Some(id)
        }
        (None, None) => None,
    };
    let pattern = pattern.map(|p| format!("%{}%", like_escaped(&p.to_lowercase())));
    let (limit_at, offset_at) = if pattern.is_some() { ("$2", "$3") } else { ("$1", "$2") };
    let filter_sql = if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
    let dir = if filter.descending { "DESC" } else { "ASC" };
    let list_sql = format!(
        "SELECT {LISTED_COLUMNS} FROM users u LEFT JOIN erased_users e ON e.user_id = u.user_id {filter_sql} \
         ORDER BY {} {dir}, u.user_id {dir} LIMIT {limit_at} OFFSET {offset_at}",
        filter.order.column()
    );
    let count_sql = format!("SELECT COUNT(*) FROM users u {filter_sql}");
    let mut list = sqlx::query_as::<_, ListedRow>(&list_sql);
    let mut count = sqlx::query_as::<_, (i64,)>(&count_sql);
    if let Some(p) = &pattern {
        list = list.bind(p.clone());
        count = count.bind(p.clone());
    }
    let rows = list.bind(limit).bind(from).fetch_all(e).await?;
    let (total,) = count.fetch_one(e).await?;
    Ok((rows.into_iter().map(listed).collect(), total))
}

/// One account as the user list shows it.
pub async fn listed_user<'e>(e: impl Exec<'e>, user_id: &str) -> Result<Option<ListedUser>> {
    let row: Option<ListedRow> = sqlx::query_as(&format!(
        "SELECT {LISTED_COLUMNS} FROM users u LEFT JOIN erased_users e ON e.user_id = u.user_id WHERE u.user_id = $1"
    ))
    .bind(user_id)
    .fetch_optional(e)
    .await?;
    Ok(row.map(listed))
}

pub async fn set_admin<'e>(e: impl Exec<'e>, user_id: &str, admin: bool) -> Result<()> {
    sqlx::query("UPDATE users SET is_admin = $1 WHERE user_id = $2")
        .bind(admin as i64)
        .bind(user_id)
        .execute(e)
        .await?;
    Ok(())
}

/// Opens a deactivated account again (it has no password until one is set).
pub async fn reactivate<'e>(e: impl Exec<'e>, user_id: &str) -> Result<()> {
    sqlx::query("UPDATE users SET deactivated = 0 WHERE user_id = $1").bind(user_id).execute(e).await?;
    Ok(())
}

/// One line of the audit log.
#[derive(Clone, Debug)]
pub struct AuditEntry {
    pub id: i64,
    pub ts: i64,
    pub admin: String,
    pub action: String,
    pub target: String,
    pub detail: Option<String>,
}

/// Records what an administrator did (in the caller's transaction, with what it did).
pub async fn record(
    conn: &mut crate::Connection,
    ts: i64,
    admin: &str,
    action: &str,
    target: &str,
    detail: Option<&str>,
) -> Result<i64> {
    let id = crate::streams::next_counter(conn, "admin_audit").await?;
    sqlx::query("INSERT INTO admin_audit (id, ts, admin, action, target, detail) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(id)
        .bind(ts)
        .bind(admin)
        .bind(action)
        .bind(target)
        .bind(detail)
        .execute(&mut *conn)
        .await?;
    Ok(id)
}

/// The audit log, newest first, before `before` (an id) when given.
pub async fn audit<'e>(e: impl Exec<'e>, before: Option<i64>, limit: i64) -> Result<Vec<AuditEntry>> {
    let rows: Vec<(i64, i64, String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT id, ts, admin, action, target, detail FROM admin_audit WHERE id < $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(e)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, ts, admin, action, target, detail)| AuditEntry { id, ts, admin, action, target, detail })
        .collect())
}

/// Every registration token, by token.
pub async fn registration_tokens<'e>(e: impl Exec<'e>) -> Result<Vec<crate::accounts::RegistrationToken>> {
    let rows: Vec<crate::accounts::TokenRow> = sqlx::query_as(
        "SELECT token, uses_allowed, pending, completed, expiry_ts FROM registration_tokens ORDER BY token",
    )
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(crate::accounts::token_from_row).collect())
}

/// Sets a token's allowed uses and expiry (`None`: unlimited, never); answers whether it exists.
pub async fn update_registration_token<'e>(
    e: impl Exec<'e>,
    token: &str,
    uses_allowed: Option<i64>,
    expiry_ts: Option<i64>,
) -> Result<bool> {
    let done = sqlx::query("UPDATE registration_tokens SET uses_allowed = $1, expiry_ts = $2 WHERE token = $3")
        .bind(uses_allowed)
        .bind(expiry_ts)
        .bind(token)
        .execute(e)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Deletes a token; answers whether it existed.
pub async fn delete_registration_token<'e>(e: impl Exec<'e>, token: &str) -> Result<bool> {
    let done = sqlx::query("DELETE FROM registration_tokens WHERE token = $1").bind(token).execute(e).await?;
    Ok(done.rows_affected() > 0)
}

/// Blocks a room (again: who and when are kept from the first time).
pub async fn block_room<'e>(e: impl Exec<'e>, room_id: &str, by: &str, ts: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO blocked_rooms (room_id, blocked_by, blocked_ts) VALUES ($1, $2, $3) \
         ON CONFLICT (room_id) DO NOTHING",
    )
    .bind(room_id)
    .bind(by)
    .bind(ts)
    .execute(e)
    .await?;
    Ok(())
}

pub async fn unblock_room<'e>(e: impl Exec<'e>, room_id: &str) -> Result<()> {
    sqlx::query("DELETE FROM blocked_rooms WHERE room_id = $1").bind(room_id).execute(e).await?;
    Ok(())
}

/// Who blocked the room, when it is blocked.
pub async fn room_blocked_by<'e>(e: impl Exec<'e>, room_id: &str) -> Result<Option<String>> {
    let row: Option<(String,)> = sqlx::query_as("SELECT blocked_by FROM blocked_rooms WHERE room_id = $1")
        .bind(room_id)
        .fetch_optional(e)
        .await?;
    Ok(row.map(|(by,)| by))
}

/// Every user's own rate limit: (user, messages per second, burst).
pub async fn ratelimit_overrides<'e>(e: impl Exec<'e>) -> Result<Vec<(String, i64, i64)>> {
    Ok(sqlx::query_as("SELECT user_id, messages_per_second, burst_count FROM ratelimit_overrides ORDER BY user_id")
        .fetch_all(e)
        .await?)
}

pub async fn ratelimit_override<'e>(e: impl Exec<'e>, user_id: &str) -> Result<Option<(i64, i64)>> {
    Ok(sqlx::query_as("SELECT messages_per_second, burst_count FROM ratelimit_overrides WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(e)
        .await?)
}

pub async fn set_ratelimit_override<'e>(e: impl Exec<'e>, user_id: &str, per_second: i64, burst: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO ratelimit_overrides (user_id, messages_per_second, burst_count) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id) DO UPDATE SET messages_per_second = $2, burst_count = $3",
    )
    .bind(user_id)
    .bind(per_second)
    .bind(burst)
    .execute(e)
    .await?;
    Ok(())
}

pub async fn delete_ratelimit_override<'e>(e: impl Exec<'e>, user_id: &str) -> Result<()> {
    sqlx::query("DELETE FROM ratelimit_overrides WHERE user_id = $1").bind(user_id).execute(e).await?;
    Ok(())
}

/// Every shadow-banned user.
pub async fn shadow_banned<'e>(e: impl Exec<'e>) -> Result<Vec<String>> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT user_id FROM shadow_banned_users ORDER BY user_id").fetch_all(e).await?;
    Ok(rows.into_iter().map(|(u,)| u).collect())
}

pub async fn set_shadow_banned<'e>(e: impl Exec<'e>, user_id: &str, by: Option<(&str, i64)>) -> Result<()> {
    match by {
        Some((by, ts)) => sqlx::query(
            "INSERT INTO shadow_banned_users (user_id, banned_by, banned_ts) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(user_id)
        .bind(by)
        .bind(ts),
        None => sqlx::query("DELETE FROM shadow_banned_users WHERE user_id = $1").bind(user_id),
    }
    .execute(e)
    .await?;
    Ok(())
}
