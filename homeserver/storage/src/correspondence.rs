//! Formal correspondence: signed records, reference numbers, deliveries, action items,
//! journals, followed tags and authors' signing keys.

use crate::{Connection, Exec, Result};

/// An author's signing key.
#[derive(Clone, Debug)]
pub struct SigningKey {
    pub key_id: String,
    pub public_key: String,
    /// Base64 PKCS#8, when the server holds the key.
    pub secret: Option<String>,
}

/// The newest key of `user_id` the server holds (seals with).
pub async fn held_key<'e>(e: impl Exec<'e>, user_id: &str) -> Result<Option<SigningKey>> {
    let row: Option<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT key_id, public_key, secret FROM correspondence_keys WHERE user_id = $1 AND secret IS NOT NULL \
         ORDER BY created_ts DESC, key_id LIMIT 1",
    )
    .bind(user_id)
    .fetch_optional(e)
    .await?;
    Ok(row.map(|(key_id, public_key, secret)| SigningKey { key_id, public_key, secret }))
}

/// Every key of `user_id` (public halves).
pub async fn public_keys<'e>(e: impl Exec<'e>, user_id: &str) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as("SELECT key_id, public_key FROM correspondence_keys WHERE user_id = $1 ORDER BY key_id")
        .bind(user_id)
        .fetch_all(e)
        .await?)
}

/// Records a key; false when the user already has a key of that id.
pub async fn insert_key<'e>(e: impl Exec<'e>, user_id: &str, key: &SigningKey, ts: i64) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO correspondence_keys (user_id, key_id, public_key, secret, created_ts) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (user_id, key_id) DO NOTHING",
    )
    .bind(user_id)
    .bind(&key.key_id)
    .bind(&key.public_key)
    .bind(key.secret.as_deref())
    .bind(ts)
    .execute(e)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Hands out the next number of a sending group for a year and records the reference it makes
/// (`reference(number)`) as reserved by `author`.
pub async fn reserve_reference(
    conn: &mut Connection,
    group_slug: &str,
    year: i64,
    author: &str,
    ts: i64,
    reference: impl FnOnce(i64) -> String,
) -> Result<String> {
    let (number,): (i64,) = sqlx::query_as(
        "INSERT INTO correspondence_counters (group_slug, year, last_number) VALUES ($1, $2, 1) \
         ON CONFLICT (group_slug, year) DO UPDATE SET last_number = correspondence_counters.last_number + 1 \
         RETURNING last_number",
    )
    .bind(group_slug)
    .bind(year)
    .fetch_one(&mut *conn)
    .await?;
    let reference = reference(number);
    sqlx::query(
        "INSERT INTO correspondence_references (reference, group_slug, author, reserved_ts) VALUES ($1, $2, $3, $4)",
    )
    .bind(&reference)
    .bind(group_slug)
    .bind(author)
    .bind(ts)
    .execute(&mut *conn)
    .await?;
    Ok(reference)
}

/// Who reserved a reference, for which group: `(group_slug, author)`.
pub async fn reservation<'e>(e: impl Exec<'e>, reference: &str) -> Result<Option<(String, String)>> {
    Ok(sqlx::query_as("SELECT group_slug, author FROM correspondence_references WHERE reference = $1")
        .bind(reference)
        .fetch_optional(e)
        .await?)
}

/// A dispatched correspondence.
#[derive(Clone, Debug)]
pub struct Stored {
    pub reference: String,
    pub kind: String,
    pub group_slug: String,
    pub author: String,
    pub sealed_for_device: Option<String>,
    pub classification: String,
    pub subject: String,
    pub record: String,
    pub ts: i64,
}

type StoredRow = (String, String, String, String, Option<String>, String, String, String, i64);

pub async fn insert<'e>(e: impl Exec<'e>, c: &Stored) -> Result<()> {
    sqlx::query(
        "INSERT INTO correspondence (reference, kind, group_slug, author, sealed_for_device, classification, \
         subject, record, ts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&c.reference)
    .bind(&c.kind)
    .bind(&c.group_slug)
    .bind(&c.author)
    .bind(c.sealed_for_device.as_deref())
    .bind(&c.classification)
    .bind(&c.subject)
    .bind(&c.record)
    .bind(c.ts)
    .execute(e)
    .await?;
    Ok(())
}

pub async fn get<'e>(e: impl Exec<'e>, reference: &str) -> Result<Option<Stored>> {
    let row: Option<StoredRow> = sqlx::query_as(
        "SELECT reference, kind, group_slug, author, sealed_for_device, classification, subject, record, ts \
         FROM correspondence WHERE reference = $1",
    )
    .bind(reference)
    .fetch_optional(e)
    .await?;
    Ok(row.map(stored))
}

/// The correspondence a group sent, or received for action or information, signed in
/// `from <= ts < to`, oldest first (then by reference): what its archive holds for a period.
pub async fn of_group_between<'e>(e: impl Exec<'e>, group_slug: &str, from: i64, to: i64) -> Result<Vec<Stored>> {
    let rows: Vec<StoredRow> = sqlx::query_as(
        "SELECT reference, kind, group_slug, author, sealed_for_device, classification, subject, record, ts \
         FROM correspondence WHERE ts >= $2 AND ts < $3 AND (group_slug = $1 OR reference IN \
         (SELECT reference FROM correspondence_deliveries WHERE group_slug = $1 AND role IN ('action', 'information'))) \
         ORDER BY ts, reference",
    )
    .bind(group_slug)
    .bind(from)
    .bind(to)
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(stored).collect())
}

fn stored(r: StoredRow) -> Stored {
    Stored {
        reference: r.0,
        kind: r.1,
        group_slug: r.2,
        author: r.3,
        sealed_for_device: r.4,
        classification: r.5,
        subject: r.6,
        record: r.7,
        ts: r.8,
    }
}

/// One event carrying a correspondence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub reference: String,
    pub room_id: String,
    pub event_id: String,
    pub stream_ordering: i64,
    pub role: String,
    pub group_slug: String,
}

type DeliveryRow = (String, String, String, i64, String, String);

fn delivery(r: DeliveryRow) -> Delivery {
    Delivery { reference: r.0, room_id: r.1, event_id: r.2, stream_ordering: r.3, role: r.4, group_slug: r.5 }
}

pub async fn insert_deliveries(conn: &mut Connection, rows: &[Delivery]) -> Result<()> {
    let head =
        "INSERT INTO correspondence_deliveries (reference, room_id, event_id, stream_ordering, role, group_slug)";
    crate::insert_rows(conn, head, 6, rows, |q, d| {
        q.bind(&d.reference)
            .bind(&d.room_id)
            .bind(&d.event_id)
            .bind(d.stream_ordering)
            .bind(&d.role)
            .bind(&d.group_slug)
    })
    .await
}

/// Where a correspondence was delivered, in stream order.
pub async fn deliveries<'e>(e: impl Exec<'e>, reference: &str) -> Result<Vec<Delivery>> {
    let rows: Vec<DeliveryRow> = sqlx::query_as(
        "SELECT reference, room_id, event_id, stream_ordering, role, group_slug FROM correspondence_deliveries \
         WHERE reference = $1 ORDER BY stream_ordering",
    )
    .bind(reference)
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(delivery).collect())
}

/// The delivery an event is.
pub async fn delivery_of<'e>(e: impl Exec<'e>, event_id: &str) -> Result<Option<Delivery>> {
    let row: Option<DeliveryRow> = sqlx::query_as(
        "SELECT reference, room_id, event_id, stream_ordering, role, group_slug FROM correspondence_deliveries \
         WHERE event_id = $1",
    )
    .bind(event_id)
    .fetch_optional(e)
    .await?;
    Ok(row.map(delivery))
}

/// The journal entries showing a group's action item.
pub async fn action_entries<'e>(e: impl Exec<'e>, reference: &str, group_slug: &str) -> Result<Vec<Delivery>> {
    let rows: Vec<DeliveryRow> = sqlx::query_as(
        "SELECT reference, room_id, event_id, stream_ordering, role, group_slug FROM correspondence_deliveries \
         WHERE reference = $1 AND group_slug = $2 AND role = 'journal_action' ORDER BY stream_ordering",
    )
    .bind(reference)
    .bind(group_slug)
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(delivery).collect())
}

/// The distinct users whose public read receipt, in a room the correspondence was delivered
/// to, is at or after its delivery there; with their primary group (a space id).
pub async fn readers<'e>(e: impl Exec<'e>, reference: &str) -> Result<Vec<(String, Option<String>)>> {
    Ok(sqlx::query_as(
        "SELECT DISTINCT r.user_id, u.primary_group FROM correspondence_deliveries d \
         JOIN receipts r ON r.room_id = d.room_id AND r.receipt_type = 'm.read' \
         JOIN events ev ON ev.event_id = r.event_id \
         LEFT JOIN users u ON u.user_id = r.user_id \
         WHERE d.reference = $1 AND ev.stream_ordering >= d.stream_ordering \
         ORDER BY r.user_id",
    )
    .bind(reference)
    .fetch_all(e)
    .await?)
}

/// An addressee group's action item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Action {
    pub reference: String,
    pub group_slug: String,
    pub status: String,
    pub assignee: Option<String>,
    pub updated_by: Option<String>,
    pub updated_ts: i64,
}

pub async fn insert_actions(conn: &mut Connection, rows: &[Action]) -> Result<()> {
    let head = "INSERT INTO correspondence_actions (reference, group_slug, status, assignee, updated_by, updated_ts)";
    crate::insert_rows(conn, head, 6, rows, |q, a| {
        q.bind(&a.reference)
            .bind(&a.group_slug)
            .bind(&a.status)
            .bind(a.assignee.as_deref())
            .bind(a.updated_by.as_deref())
            .bind(a.updated_ts)
    })
    .await
}

type ActionRow = (String, String, String, Option<String>, Option<String>, i64);

fn action_of(r: ActionRow) -> Action {
    Action { reference: r.0, group_slug: r.1, status: r.2, assignee: r.3, updated_by: r.4, updated_ts: r.5 }
}

pub async fn action<'e>(e: impl Exec<'e>, reference: &str, group_slug: &str) -> Result<Option<Action>> {
    let row: Option<ActionRow> = sqlx::query_as(
        "SELECT reference, group_slug, status, assignee, updated_by, updated_ts FROM correspondence_actions \
         WHERE reference = $1 AND group_slug = $2",
    )
    .bind(reference)
    .bind(group_slug)
    .fetch_optional(e)
    .await?;
    Ok(row.map(action_of))
}

/// The action items of a group, newest first.
pub async fn group_actions<'e>(e: impl Exec<'e>, group_slug: &str) -> Result<Vec<Action>> {
    let rows: Vec<ActionRow> = sqlx::query_as(
        "SELECT reference, group_slug, status, assignee, updated_by, updated_ts FROM correspondence_actions \
         WHERE group_slug = $1 ORDER BY updated_ts DESC, reference",
    )
    .bind(group_slug)
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(action_of).collect())
}

pub async fn set_action<'e>(e: impl Exec<'e>, a: &Action) -> Result<()> {
    sqlx::query(
        "UPDATE correspondence_actions SET status = $1, assignee = $2, updated_by = $3, updated_ts = $4 \
         WHERE reference = $5 AND group_slug = $6",
    )
    .bind(&a.status)
    .bind(a.assignee.as_deref())
    .bind(a.updated_by.as_deref())
    .bind(a.updated_ts)
    .bind(&a.reference)
    .bind(&a.group_slug)
    .execute(e)
    .await?;
    Ok(())
}

/// Every journal: (user, room).
pub async fn journals<'e>(e: impl Exec<'e>) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as("SELECT user_id, room_id FROM journals").fetch_all(e).await?)
}

pub async fn insert_journal<'e>(e: impl Exec<'e>, user_id: &str, room_id: &str) -> Result<()> {
    sqlx::query("INSERT INTO journals (user_id, room_id) VALUES ($1, $2)")
        .bind(user_id)
        .bind(room_id)
        .execute(e)
        .await?;
    Ok(())
}

/// Follows a tag; false when it was followed already.
pub async fn follow<'e>(e: impl Exec<'e>, user_id: &str, tag: &str) -> Result<bool> {
    let done = sqlx::query("INSERT INTO followed_tags (user_id, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(user_id)
        .bind(tag)
        .execute(e)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Stops following a tag; false when it was not followed.
pub async fn unfollow<'e>(e: impl Exec<'e>, user_id: &str, tag: &str) -> Result<bool> {
    let done = sqlx::query("DELETE FROM followed_tags WHERE user_id = $1 AND tag = $2")
        .bind(user_id)
        .bind(tag)
        .execute(e)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn followed<'e>(e: impl Exec<'e>, user_id: &str) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT tag FROM followed_tags WHERE user_id = $1 ORDER BY tag")
        .bind(user_id)
        .fetch_all(e)
        .await?;
    Ok(rows.into_iter().map(|(t,)| t).collect())
}

/// Who follows `tag`.
pub async fn followers<'e>(e: impl Exec<'e>, tag: &str) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT user_id FROM followed_tags WHERE tag = $1 ORDER BY user_id")
        .bind(tag)
        .fetch_all(e)
        .await?;
    Ok(rows.into_iter().map(|(u,)| u).collect())
}

/// A draft awaiting its author's confirmation.
#[derive(Clone, Debug)]
pub struct Draft {
    pub preview_event_id: String,
    pub room_id: String,
    pub author: String,
    pub device_id: Option<String>,
    pub draft: String,
    pub ts: i64,
}

pub async fn insert_draft<'e>(e: impl Exec<'e>, d: &Draft) -> Result<()> {
    sqlx::query(
        "INSERT INTO correspondence_drafts (preview_event_id, room_id, author, device_id, draft, ts) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&d.preview_event_id)
    .bind(&d.room_id)
    .bind(&d.author)
    .bind(d.device_id.as_deref())
    .bind(&d.draft)
    .bind(d.ts)
    .execute(e)
    .await?;
    Ok(())
}

pub async fn draft<'e>(e: impl Exec<'e>, preview_event_id: &str) -> Result<Option<Draft>> {
    let row: Option<(String, String, String, Option<String>, String, i64)> = sqlx::query_as(
        "SELECT preview_event_id, room_id, author, device_id, draft, ts FROM correspondence_drafts \
         WHERE preview_event_id = $1",
    )
    .bind(preview_event_id)
    .fetch_optional(e)
    .await?;
    Ok(row.map(|r| Draft { preview_event_id: r.0, room_id: r.1, author: r.2, device_id: r.3, draft: r.4, ts: r.5 }))
}

/// Removes a draft; false when it was gone already (dispatched or replaced).
pub async fn take_draft<'e>(e: impl Exec<'e>, preview_event_id: &str) -> Result<bool> {
    let done = sqlx::query("DELETE FROM correspondence_drafts WHERE preview_event_id = $1")
        .bind(preview_event_id)
        .execute(e)
        .await?;
    Ok(done.rows_affected() == 1)
}
