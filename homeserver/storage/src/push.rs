//! Notifications decided by push rules, and pushers.

use crate::{Connection, Exec, Result};

/// One notification to write: an event notifies a user.
#[derive(Clone, Debug)]
pub struct NewPushAction<'a> {
    pub user_id: &'a str,
    pub room_id: &'a str,
    pub event_id: &'a str,
    pub stream_ordering: i64,
    pub thread_id: &'a str,
    pub highlight: bool,
    pub actions: &'a str,
    pub ts: i64,
}

/// Writes many notifications in few statements.
pub async fn insert_push_actions(conn: &mut Connection, rows: &[NewPushAction<'_>]) -> Result<()> {
    // 8 parameters a row. Statements stay small: SQLite finds each `$n` parameter by a linear
    // search of the statement's names, so binding costs the square of their number (thousands
    // of parameters made this the heaviest work of a send under load).
    for chunk in rows.chunks(64) {
        let mut sql = String::from(
            "INSERT INTO event_push_actions (user_id, room_id, event_id, stream_ordering, thread_id, highlight, \
             actions, ts) VALUES ",
        );
        for i in 0..chunk.len() {
            let b = i * 8;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            sql.push_str(&(1..=8).map(|k| format!("${}", b + k)).collect::<Vec<_>>().join(", "));
            sql.push(')');
        }
        // Not cached as a prepared statement: each batch size is a different statement.
        let mut q = sqlx::query(&sql).persistent(false);
        for r in chunk {
            q = q
                .bind(r.user_id)
                .bind(r.room_id)
                .bind(r.event_id)
                .bind(r.stream_ordering)
                .bind(r.thread_id)
                .bind(r.highlight as i64)
                .bind(r.actions)
                .bind(r.ts);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// The position of the user's latest read receipt (public or private) in the room that counts
/// for a thread: unthreaded receipts count for everything, threaded ones for their thread.
/// `$1` is the user, `$2` the room; `a` is the notification row being tested.
const READ_UP_TO: &str = "COALESCE((SELECT MAX(ev.stream_ordering) FROM receipts r \
     JOIN events ev ON ev.event_id = r.event_id WHERE r.room_id = a.room_id AND r.user_id = a.user_id \
     AND r.receipt_type IN ('m.read', 'm.read.private') AND (r.thread_id = '' OR r.thread_id = a.thread_id)), 0)";

/// The positions of a user's latest read receipts (public or private) in a room, by thread id
/// (`""` for unthreaded receipts).
pub async fn read_positions<'e>(e: impl Exec<'e>, user_id: &str, room_id: &str) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT r.thread_id, MAX(ev.stream_ordering) FROM receipts r JOIN events ev ON ev.event_id = r.event_id \
         WHERE r.room_id = $2 AND r.user_id = $1 AND r.receipt_type IN ('m.read', 'm.read.private') \
         GROUP BY r.thread_id",
    )
    .bind(user_id)
    .bind(room_id)
    .fetch_all(e)
    .await?)
}

/// A user's notifications in a room after a position: (thread id, position, highlight), at most
/// `cap` of them.
pub async fn notifications_in_room_after<'e>(
    e: impl Exec<'e>,
    user_id: &str,
    room_id: &str,
    after: i64,
    cap: i64,
) -> Result<Vec<(String, i64, i64)>> {
    Ok(sqlx::query_as(
        "SELECT thread_id, stream_ordering, highlight FROM event_push_actions \
         WHERE user_id = $1 AND room_id = $2 AND stream_ordering > $3 ORDER BY stream_ordering LIMIT $4",
    )
    .bind(user_id)
    .bind(room_id)
    .bind(after)
    .bind(cap)
    .fetch_all(e)
    .await?)
}

/// Unread notifications of a user in all rooms (the badge a push carries).
pub async fn total_unread<'e>(e: impl Exec<'e>, user_id: &str) -> Result<i64> {
    let row: (i64,) = sqlx::query_as(&format!(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM event_push_actions a WHERE a.user_id = $1 \
         AND a.stream_ordering > {READ_UP_TO}"
    ))
    .bind(user_id)
    .fetch_one(e)
    .await?;
    Ok(row.0)
}

/// A stored notification.
#[derive(Clone, Debug)]
pub struct PushAction {
    pub room_id: String,
    pub event_id: String,
    pub stream_ordering: i64,
    pub highlight: bool,
    pub actions: String,
    pub ts: i64,
    pub read: bool,
}

type Row = (String, String, i64, i64, String, i64, i64);

fn from_row(r: Row) -> PushAction {
    PushAction {
        room_id: r.0,
        event_id: r.1,
        stream_ordering: r.2,
        highlight: r.3 != 0,
        actions: r.4,
        ts: r.5,
        read: r.6 != 0,
    }
}

/// A user's notifications, newest first, below `before` (a stream position).
pub async fn notifications<'e>(
    e: impl Exec<'e>,
    user_id: &str,
    before: i64,
    limit: i64,
    only_highlight: bool,
) -> Result<Vec<PushAction>> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT a.room_id, a.event_id, a.stream_ordering, a.highlight, a.actions, a.ts, \
         CASE WHEN a.stream_ordering <= {READ_UP_TO} THEN 1 ELSE 0 END \
         FROM event_push_actions a WHERE a.user_id = $1 AND a.stream_ordering < $2 AND a.highlight >= $3 \
         ORDER BY a.stream_ordering DESC LIMIT $4"
    ))
    .bind(user_id)
    .bind(before)
    .bind(only_highlight as i64)
    .bind(limit)
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// A user's notifications after `after`, oldest first (what a pusher has to deliver).
pub async fn notifications_after<'e>(
    e: impl Exec<'e>,
    user_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<PushAction>> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT a.room_id, a.event_id, a.stream_ordering, a.highlight, a.actions, a.ts, \
         CASE WHEN a.stream_ordering <= {READ_UP_TO} THEN 1 ELSE 0 END \
         FROM event_push_actions a WHERE a.user_id = $1 AND a.stream_ordering > $2 \
         ORDER BY a.stream_ordering LIMIT $3"
    ))
    .bind(user_id)
    .bind(after)
    .bind(limit)
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// A pusher as stored.
#[derive(Clone, Debug)]
pub struct Pusher {
    pub user_id: String,
    pub device_id: Option<String>,
    pub kind: String,
    pub app_id: String,
    pub pushkey: String,
    pub app_display_name: String,
    pub device_display_name: String,
    pub profile_tag: Option<String>,
    pub lang: String,
    pub data: String,
    pub created_ts: i64,
    pub last_stream_ordering: i64,
}

type PusherRow =
    (String, Option<String>, String, String, String, String, String, Option<String>, String, String, i64, i64);

const PUSHER_COLUMNS: &str = "user_id, device_id, kind, app_id, pushkey, app_display_name, device_display_name, \
     profile_tag, lang, data, created_ts, last_stream_ordering";

fn pusher(r: PusherRow) -> Pusher {
    Pusher {
        user_id: r.0,
        device_id: r.1,
        kind: r.2,
        app_id: r.3,
        pushkey: r.4,
        app_display_name: r.5,
        device_display_name: r.6,
        profile_tag: r.7,
        lang: r.8,
        data: r.9,
        created_ts: r.10,
        last_stream_ordering: r.11,
    }
}

/// Creates or replaces the user's pusher with this app id and push key.
pub async fn upsert_pusher<'e>(e: impl Exec<'e>, p: &Pusher) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO pushers ({PUSHER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (app_id, pushkey, user_id) DO UPDATE SET device_id = excluded.device_id, kind = excluded.kind, \
         app_display_name = excluded.app_display_name, device_display_name = excluded.device_display_name, \
         profile_tag = excluded.profile_tag, lang = excluded.lang, data = excluded.data"
    ))
    .bind(&p.user_id)
    .bind(&p.device_id)
    .bind(&p.kind)
    .bind(&p.app_id)
    .bind(&p.pushkey)
    .bind(&p.app_display_name)
    .bind(&p.device_display_name)
    .bind(&p.profile_tag)
    .bind(&p.lang)
    .bind(&p.data)
    .bind(p.created_ts)
    .bind(p.last_stream_ordering)
    .execute(e)
    .await?;
    Ok(())
}

/// Deletes pushers with this app id and push key: the user's own, or (`other_users`) everyone
/// else's.
pub async fn delete_pushers<'e>(
    e: impl Exec<'e>,
    app_id: &str,
    pushkey: &str,
    user_id: &str,
    other_users: bool,
) -> Result<u64> {
    let op = if other_users { "<>" } else { "=" };
    let done = sqlx::query(&format!("DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id {op} $3"))
        .bind(app_id)
        .bind(pushkey)
        .bind(user_id)
        .execute(e)
        .await?;
    Ok(done.rows_affected())
}

/// Deletes the pushers set from a device (when the device is deleted or logs out).
pub async fn delete_device_pushers<'e>(e: impl Exec<'e>, user_id: &str, device_id: &str) -> Result<()> {
    sqlx::query("DELETE FROM pushers WHERE user_id = $1 AND device_id = $2")
        .bind(user_id)
        .bind(device_id)
        .execute(e)
        .await?;
    Ok(())
}

pub async fn delete_user_pushers<'e>(e: impl Exec<'e>, user_id: &str) -> Result<()> {
    sqlx::query("DELETE FROM pushers WHERE user_id = $1").bind(user_id).execute(e).await?;
    Ok(())
}

pub async fn all_pushers<'e>(e: impl Exec<'e>) -> Result<Vec<Pusher>> {
    let rows: Vec<PusherRow> = sqlx::query_as(&format!("SELECT {PUSHER_COLUMNS} FROM pushers")).fetch_all(e).await?;
    Ok(rows.into_iter().map(pusher).collect())
}

/// Records how far a pusher has delivered.
pub async fn set_pusher_position<'e>(
    e: impl Exec<'e>,
    app_id: &str,
    pushkey: &str,
    user_id: &str,
    position: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE pushers SET last_stream_ordering = $4 WHERE app_id = $1 AND pushkey = $2 AND user_id = $3 \
         AND last_stream_ordering < $4",
    )
    .bind(app_id)
    .bind(pushkey)
    .bind(user_id)
    .bind(position)
    .execute(e)
    .await?;
    Ok(())
}
