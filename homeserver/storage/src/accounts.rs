//! Users, devices, access and refresh tokens, registration tokens.

use crate::{flag, Exec, Result};

#[derive(Clone, Debug)]
pub struct User {
    pub user_id: String,
    pub password_hash: Option<String>,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
    pub is_admin: bool,
    pub deactivated: bool,
    /// A guest account (`/register?kind=guest`): no password, limited to the spec's guest
    /// endpoints, until upgraded.
    pub is_guest: bool,
}

type UserRow = (String, Option<String>, Option<String>, Option<String>, i64, i64, i64);

fn user_from_row(r: UserRow) -> User {
    User {
        user_id: r.0,
        password_hash: r.1,
        displayname: r.2,
        avatar_url: r.3,
        is_admin: flag(r.4),
        deactivated: flag(r.5),
        is_guest: flag(r.6),
    }
}

const USER_COLUMNS: &str = "user_id, password_hash, displayname, avatar_url, is_admin, deactivated, is_guest";

/// Inserts a user; fails with a unique violation when the id is taken.
pub async fn create_user<'e>(
    e: impl Exec<'e>,
    user_id: &str,
    password_hash: Option<&str>,
    displayname: Option<&str>,
    is_admin: bool,
    is_guest: bool,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO users (user_id, password_hash, displayname, is_admin, is_guest, created_ts) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(user_id)
    .bind(password_hash)
    .bind(displayname)
    .bind(is_admin as i64)
    .bind(is_guest as i64)
    .bind(now)
    .execute(e)
    .await?;
    Ok(())
}

pub async fn get_user<'e>(e: impl Exec<'e>, user_id: &str) -> Result<Option<User>> {
    let row: Option<UserRow> = sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE user_id = $1"))
        .bind(user_id)
        .fetch_optional(e)
        .await?;
    Ok(row.map(user_from_row))
}

pub async fn user_exists<'e>(e: impl Exec<'e>, user_id: &str) -> Result<bool> {
    let row: Option<(i64,)> =
        sqlx::query_as("SELECT 1 FROM users WHERE user_id = $1").bind(user_id).fetch_optional(e).await?;
    Ok(row.is_some())
}

/// Marks a user as a guest (`true`) or a full account (`false`, when a guest upgrades).
pub async fn set_guest<'e>(e: impl Exec<'e>, user_id: &str, is_guest: bool) -> Result<()> {
    sqlx::query("UPDATE users SET is_guest = $1 WHERE user_id = $2")
        .bind(is_guest as i64)
        .bind(user_id)
        .execute(e)
        .await?;
    Ok(())
}

pub async fn set_password<'e>(e: impl Exec<'e>, user_id: &str, hash: Option<&str>) -> Result<()> {
    sqlx::query("UPDATE users SET password_hash = $1 WHERE user_id = $2").bind(hash).bind(user_id).execute(e).await?;
    Ok(())
}

/// Marks an account erased (deactivated with `erase: true`).
pub async fn set_erased<'e>(e: impl Exec<'e>, user_id: &str) -> Result<()> {
    sqlx::query("INSERT INTO erased_users (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING")
        .bind(user_id)
        .execute(e)
        .await?;
    Ok(())
}

/// Every erased account.
pub async fn erased_users<'e>(e: impl Exec<'e>) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT user_id FROM erased_users").fetch_all(e).await?;
    Ok(rows.into_iter().map(|(u,)| u).collect())
}

pub async fn set_deactivated<'e>(e: impl Exec<'e>, user_id: &str) -> Result<()> {
    sqlx::query(
        "UPDATE users SET deactivated = 1, password_hash = NULL, displayname = NULL, \
         avatar_url = NULL WHERE user_id = $1",
    )
    .bind(user_id)
    .execute(e)
    .await?;
    Ok(())
}

pub async fn set_displayname<'e>(e: impl Exec<'e>, user_id: &str, v: Option<&str>) -> Result<()> {
    sqlx::query("UPDATE users SET displayname = $1 WHERE user_id = $2").bind(v).bind(user_id).execute(e).await?;
    Ok(())
}

pub async fn set_avatar_url<'e>(e: impl Exec<'e>, user_id: &str, v: Option<&str>) -> Result<()> {
    sqlx::query("UPDATE users SET avatar_url = $1 WHERE user_id = $2").bind(v).bind(user_id).execute(e).await?;
    Ok(())
}

/// Searches active users whose id or display name contains `term` (case-insensitive): `%`
/// and `_` in it are matched as themselves.
pub async fn search_users<'e>(e: impl Exec<'e>, term: &str, limit: i64) -> Result<Vec<User>> {
    let pattern = format!("%{}%", like_escaped(&term.to_lowercase()));
    let rows: Vec<UserRow> = sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE deactivated = 0 AND \
         (LOWER(user_id) LIKE $1 ESCAPE '\\' OR LOWER(COALESCE(displayname, '')) LIKE $1 ESCAPE '\\') \
         ORDER BY user_id LIMIT $2"
    ))
    .bind(pattern)
    .bind(limit)
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(user_from_row).collect())
}

/// `text` with the wildcards of `LIKE` (`%`, `_`) and the escape character itself escaped
/// by `\`, for `LIKE ... ESCAPE '\'` (the same on SQLite and PostgreSQL).
pub fn like_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[derive(Clone, Debug)]
pub struct Device {
    pub device_id: String,
    pub display_name: Option<String>,
    pub last_seen_ts: Option<i64>,
    pub last_seen_ip: Option<String>,
    pub last_seen_user_agent: Option<String>,
}

/// Creates the device, or keeps the existing one (a login may re-use a device id).
pub async fn upsert_device<'e>(
    e: impl Exec<'e>,
    user_id: &str,
    device_id: &str,
    display_name: Option<&str>,
    now: i64,
    ip: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO devices (user_id, device_id, display_name, last_seen_ts, last_seen_ip, created_ts) \
         VALUES ($1, $2, $3, $4, $5, $4) ON CONFLICT (user_id, device_id) DO UPDATE SET \
         display_name = COALESCE(excluded.display_name, devices.display_name), \
         last_seen_ts = excluded.last_seen_ts, last_seen_ip = excluded.last_seen_ip",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(display_name)
    .bind(now)
    .bind(ip)
    .execute(e)
    .await?;
    Ok(())
}

type DeviceRow = (String, Option<String>, Option<i64>, Option<String>, Option<String>);

fn device_from_row(r: DeviceRow) -> Device {
    Device { device_id: r.0, display_name: r.1, last_seen_ts: r.2, last_seen_ip: r.3, last_seen_user_agent: r.4 }
}

/// Where, when and with what client a device was last seen.
pub struct LastSeen<'a> {
    pub user_id: &'a str,
    pub device_id: &'a str,
    pub ts: i64,
    pub ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

/// Records when devices were last seen (in the caller's transaction).
pub async fn record_last_seen(conn: &mut crate::Connection, seen: &[LastSeen<'_>]) -> Result<()> {
    for s in seen {
        sqlx::query(
            "UPDATE devices SET last_seen_ts = $1, last_seen_ip = COALESCE($2, last_seen_ip), \
             last_seen_user_agent = COALESCE($3, last_seen_user_agent) WHERE user_id = $4 AND device_id = $5",
        )
        .bind(s.ts)
        .bind(s.ip)
        .bind(s.user_agent)
        .bind(s.user_id)
        .bind(s.device_id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

pub async fn get_devices<'e>(e: impl Exec<'e>, user_id: &str) -> Result<Vec<Device>> {
    let rows: Vec<DeviceRow> = sqlx::query_as(
        "SELECT device_id, display_name, last_seen_ts, last_seen_ip, last_seen_user_agent FROM devices \
         WHERE user_id = $1 ORDER BY device_id",
    )
    .bind(user_id)
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(device_from_row).collect())
}

pub async fn get_device<'e>(e: impl Exec<'e>, user_id: &str, device_id: &str) -> Result<Option<Device>> {
    let row: Option<DeviceRow> = sqlx::query_as(
        "SELECT device_id, display_name, last_seen_ts, last_seen_ip, last_seen_user_agent FROM devices \
         WHERE user_id = $1 AND device_id = $2",
    )
    .bind(user_id)
    .bind(device_id)
    .fetch_optional(e)
    .await?;
    Ok(row.map(device_from_row))
}

pub async fn rename_device<'e>(e: impl Exec<'e>, user_id: &str, device_id: &str, name: Option<&str>) -> Result<bool> {
    let done = sqlx::query("UPDATE devices SET display_name = $1 WHERE user_id = $2 AND device_id = $3")
        .bind(name)
        .bind(user_id)
        .bind(device_id)
        .execute(e)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Everything bound to a device: its row, its tokens, its keys (MLS key packages too), its
/// pending to-device messages, the rooms it peeks into.
const DEVICE_TABLES: [&str; 9] = [
    "devices",
    "access_tokens",
    "refresh_tokens",
    "device_keys",
    "one_time_keys",
    "fallback_keys",
    "mls_key_packages",
    "to_device",
    "room_peeks",
];

/// Removes a device with everything bound to it. Run it inside a transaction.
pub async fn delete_device(conn: &mut crate::Connection, user_id: &str, device_id: &str) -> Result<()> {
    for table in DEVICE_TABLES {
        sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1 AND device_id = $2"))
            .bind(user_id)
            .bind(device_id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Removes all devices and tokens of a user, but `keep_device` if given.
pub async fn delete_all_devices(
    conn: &mut crate::Connection,
    user_id: &str,
    keep_device: Option<&str>,
) -> Result<Vec<String>> {
    let keep = keep_device.unwrap_or("");
    // A write first: on SQLite, a transaction that read before writing fails when another
    // connection committed in between (SQLITE_BUSY_SNAPSHOT); one that writes first waits.
    let gone: Vec<(String,)> =
        sqlx::query_as("DELETE FROM devices WHERE user_id = $1 AND device_id <> $2 RETURNING device_id")
            .bind(user_id)
            .bind(keep)
            .fetch_all(&mut *conn)
            .await?;
    for table in DEVICE_TABLES.iter().filter(|t| **t != "devices") {
        sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1 AND device_id <> $2"))
            .bind(user_id)
            .bind(keep)
            .execute(&mut *conn)
            .await?;
    }
    Ok(gone.into_iter().map(|(d,)| d).collect())
}

pub async fn touch_device<'e>(
    e: impl Exec<'e>,
    user_id: &str,
    device_id: &str,
    now: i64,
    ip: Option<&str>,
) -> Result<()> {
    sqlx::query("UPDATE devices SET last_seen_ts = $1, last_seen_ip = COALESCE($2, last_seen_ip) WHERE user_id = $3 AND device_id = $4")
        .bind(now)
        .bind(ip)
        .bind(user_id)
        .bind(device_id)
        .execute(e)
        .await?;
    Ok(())
}

#[derive(Clone, Debug)]
pub struct AccessToken {
    pub user_id: String,
    pub device_id: String,
    pub expires_ts: Option<i64>,
}

pub async fn insert_access_token<'e>(
    e: impl Exec<'e>,
    token: &str,
    user_id: &str,
    device_id: &str,
    expires_ts: Option<i64>,
    refresh_token: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO access_tokens (token, user_id, device_id, expires_ts, refresh_token) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(token)
    .bind(user_id)
    .bind(device_id)
    .bind(expires_ts)
    .bind(refresh_token)
    .execute(e)
    .await?;
    Ok(())
}

pub async fn get_access_token<'e>(e: impl Exec<'e>, token: &str) -> Result<Option<AccessToken>> {
    let row: Option<(String, String, Option<i64>)> =
        sqlx::query_as("SELECT user_id, device_id, expires_ts FROM access_tokens WHERE token = $1")
            .bind(token)
            .fetch_optional(e)
            .await?;
    Ok(row.map(|r| AccessToken { user_id: r.0, device_id: r.1, expires_ts: r.2 }))
}

pub async fn delete_access_token<'e>(e: impl Exec<'e>, token: &str) -> Result<()> {
    sqlx::query("DELETE FROM access_tokens WHERE token = $1").bind(token).execute(e).await?;
    Ok(())
}

pub async fn insert_refresh_token<'e>(e: impl Exec<'e>, token: &str, user_id: &str, device_id: &str) -> Result<()> {
    sqlx::query("INSERT INTO refresh_tokens (token, user_id, device_id) VALUES ($1, $2, $3)")
        .bind(token)
        .bind(user_id)
        .bind(device_id)
        .execute(e)
        .await?;
    Ok(())
}

/// Consumes a refresh token: returns its owner and removes it (and the access token it backed).
pub async fn take_refresh_token(conn: &mut crate::Connection, token: &str) -> Result<Option<(String, String)>> {
    let row: Option<(String, String)> =
        sqlx::query_as("DELETE FROM refresh_tokens WHERE token = $1 RETURNING user_id, device_id")
            .bind(token)
            .fetch_optional(&mut *conn)
            .await?;
    if row.is_some() {
        sqlx::query("DELETE FROM access_tokens WHERE refresh_token = $1").bind(token).execute(&mut *conn).await?;
    }
    Ok(row)
}

/// Registration tokens (the spec's `m.login.registration_token`).
#[derive(Clone, Debug)]
pub struct RegistrationToken {
    pub token: String,
    pub uses_allowed: Option<i64>,
    pub pending: i64,
    pub completed: i64,
    pub expiry_ts: Option<i64>,
}

impl RegistrationToken {
    /// Whether a registration may still use it at `now` (uses left, not expired).
    pub fn valid_at(&self, now: i64) -> bool {
        self.uses_allowed.is_none_or(|n| self.completed + self.pending < n) && self.expiry_ts.is_none_or(|e| e > now)
    }
}

pub async fn create_registration_token<'e>(
    e: impl Exec<'e>,
    token: &str,
    uses_allowed: Option<i64>,
    expiry_ts: Option<i64>,
) -> Result<()> {
    sqlx::query("INSERT INTO registration_tokens (token, uses_allowed, expiry_ts) VALUES ($1, $2, $3)")
        .bind(token)
        .bind(uses_allowed)
        .bind(expiry_ts)
        .execute(e)
        .await?;
    Ok(())
}

pub(crate) type TokenRow = (String, Option<i64>, i64, i64, Option<i64>);

pub(crate) fn token_from_row(r: TokenRow) -> RegistrationToken {
    RegistrationToken { token: r.0, uses_allowed: r.1, pending: r.2, completed: r.3, expiry_ts: r.4 }
}

pub async fn get_registration_token<'e>(e: impl Exec<'e>, token: &str) -> Result<Option<RegistrationToken>> {
    let row: Option<TokenRow> = sqlx::query_as(
        "SELECT token, uses_allowed, pending, completed, expiry_ts FROM registration_tokens WHERE token = $1",
    )
    .bind(token)
    .fetch_optional(e)
    .await?;
    Ok(row.map(token_from_row))
}

/// Counts one completed use of a registration token.
pub async fn use_registration_token<'e>(e: impl Exec<'e>, token: &str) -> Result<()> {
    sqlx::query("UPDATE registration_tokens SET completed = completed + 1 WHERE token = $1")
        .bind(token)
        .execute(e)
        .await?;
    Ok(())
}

/// The account linked to an identity at a single sign-on provider.
pub async fn user_by_external_id<'e>(e: impl Exec<'e>, provider: &str, external_id: &str) -> Result<Option<String>> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT user_id FROM user_external_ids WHERE auth_provider = $1 AND external_id = $2")
            .bind(provider)
            .bind(external_id)
            .fetch_optional(e)
            .await?;
    Ok(row.map(|(u,)| u))
}

pub async fn link_external_id<'e>(e: impl Exec<'e>, provider: &str, external_id: &str, user_id: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO user_external_ids (auth_provider, external_id, user_id) VALUES ($1, $2, $3) \
         ON CONFLICT (auth_provider, external_id) DO NOTHING",
    )
    .bind(provider)
    .bind(external_id)
    .bind(user_id)
    .execute(e)
    .await?;
    Ok(())
}

/// An account's identities at single sign-on providers: (provider, external id).
pub async fn external_ids<'e>(e: impl Exec<'e>, user_id: &str) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT auth_provider, external_id FROM user_external_ids WHERE user_id = $1 ORDER BY auth_provider",
    )
    .bind(user_id)
    .fetch_all(e)
    .await?)
}
