//! Notifications decided by push rules, and pushers.

use crate::{Connection, Exec, Result};

/// One user's own outcome for an event (differing from the event's default outcome).
#[derive(Clone, Debug)]
pub struct NewPushAction<'a> {
    pub user_id: &'a str,
    pub room_id: &'a str,
    pub event_id: &'a str,
    pub stream_ordering: i64,
    pub thread_id: &'a str,
    /// False: not notified, although the default notifies.
    pub notify: bool,
    pub highlight: bool,
    pub actions: &'a str,
    pub ts: i64,
}

/// Writes many users' own outcomes in few statements.
pub async fn insert_push_actions(conn: &mut Connection, rows: &[NewPushAction<'_>]) -> Result<()> {
    let head = "INSERT INTO event_push_actions (user_id, room_id, event_id, stream_ordering, thread_id, notify, \
         highlight, actions, ts)";
    crate::insert_rows(conn, head, 9, rows, |q, r| {
        q.bind(r.user_id)
            .bind(r.room_id)
            .bind(r.event_id)
            .bind(r.stream_ordering)
            .bind(r.thread_id)
            .bind(r.notify as i64)
            .bind(r.highlight as i64)
            .bind(r.actions)
            .bind(r.ts)
    })
    .await
}

/// The outcome an event's default rules give the members it does not name.
#[derive(Clone, Debug)]
pub struct NewPushDefault<'a> {
    pub room_id: &'a str,
    pub stream_ordering: i64,
    pub event_id: &'a str,
    pub sender: &'a str,
    pub thread_id: &'a str,
    pub highlight: bool,
    pub actions: &'a str,
    pub ts: i64,
}

pub async fn insert_push_defaults(conn: &mut Connection, rows: &[NewPushDefault<'_>]) -> Result<()> {
    let head = "INSERT INTO event_push_defaults (room_id, stream_ordering, event_id, sender, thread_id, highlight, \
         actions, ts)";
    crate::insert_rows(conn, head, 8, rows, |q, r| {
        q.bind(r.room_id)
            .bind(r.stream_ordering)
            .bind(r.event_id)
            .bind(r.sender)
            .bind(r.thread_id)
            .bind(r.highlight as i64)
            .bind(r.actions)
            .bind(r.ts)
    })
    .await
}

/// A user's receipt positions in a room, per thread ("" for the unthreaded receipt).
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

/// A notification as stored: an event's default outcome (`user_id` empty) or a user's own.
#[derive(Clone, Debug)]
pub struct PushAction {
    pub user_id: String,
    pub room_id: String,
    pub event_id: String,
    pub stream_ordering: i64,
    pub sender: String,
    pub thread_id: String,
    pub notify: bool,
    pub highlight: bool,
    pub actions: String,
    pub ts: i64,
}

type Row = (String, String, String, i64, String, String, i64, i64, String, i64);

fn from_row(r: Row) -> PushAction {
    PushAction {
        user_id: r.0,
        room_id: r.1,
        event_id: r.2,
        stream_ordering: r.3,
        sender: r.4,
        thread_id: r.5,
        notify: r.6 != 0,
        highlight: r.7 != 0,
        actions: r.8,
        ts: r.9,
    }
}

/// The order and bounds of a scan of notifications: `after < position < before`.
#[derive(Clone, Copy, Debug)]
pub struct Scan {
    pub after: i64,
    pub before: i64,
    pub newest_first: bool,
    pub limit: i64,
}

impl Scan {
    fn order(&self) -> &'static str {
        if self.newest_first {
            "DESC"
        } else {
            "ASC"
        }
    }
}

/// Default outcomes of events in `rooms`, within `scan`.
pub async fn default_notifications(conn: &mut Connection, rooms: &[&str], scan: Scan) -> Result<Vec<PushAction>> {
    if rooms.is_empty() {
        return Ok(Vec::new());
    }
    let sqlite = conn.backend_name().eq_ignore_ascii_case("sqlite");
    let list: Vec<String> =
        (0..rooms.len()).map(|i| if sqlite { "?".to_owned() } else { format!("${}", i + 3) }).collect();
    let (p1, p2) = if sqlite { ("?", "?") } else { ("$1", "$2") };
    // SQLite numbers anonymous parameters in order of appearance: the bounds come first.
    let sql = format!(
        "SELECT '', room_id, event_id, stream_ordering, sender, thread_id, 1, highlight, actions, ts \
         FROM event_push_defaults WHERE stream_ordering > {p1} AND stream_ordering < {p2} AND room_id IN ({}) \
         ORDER BY stream_ordering {} LIMIT {}",
        list.join(", "),
        scan.order(),
        scan.limit.max(1)
    );
    let mut q = sqlx::query_as::<_, Row>(&sql).persistent(false).bind(scan.after).bind(scan.before);
    for r in rooms {
        q = q.bind(*r);
    }
    Ok(q.fetch_all(&mut *conn).await?.into_iter().map(from_row).collect())
}

/// A user's own outcomes within `scan`, in one room or all.
pub async fn user_notifications<'e>(
    e: impl Exec<'e>,
    user_id: &str,
    room_id: Option<&str>,
    scan: Scan,
) -> Result<Vec<PushAction>> {
    let sql = format!(
        "SELECT user_id, room_id, event_id, stream_ordering, '', thread_id, notify, highlight, actions, ts \
         FROM event_push_actions WHERE user_id = $1 AND stream_ordering > $2 AND stream_ordering < $3 \
         AND ($4 IS NULL OR room_id = $4) ORDER BY stream_ordering {} LIMIT $5",
        scan.order()
    );
    let rows: Vec<Row> = sqlx::query_as(&sql)
        .bind(user_id)
        .bind(scan.after)
        .bind(scan.before)
        .bind(room_id)
        .bind(scan.limit)
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
