//! Media metadata: uploads, media ids awaiting their upload, cached thumbnails.

use crate::{Exec, Result};

/// One media item. `size` and `sha256` are `None` while its upload is pending.
#[derive(Clone, Debug)]
pub struct Media {
    pub origin: String,
    pub media_id: String,
    pub uploader: String,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub size: Option<i64>,
    pub sha256: Option<String>,
    pub created_ts: i64,
    pub expires_ts: Option<i64>,
}

#[derive(Clone, Debug)]
pub struct Thumbnail {
    pub width: i64,
    pub height: i64,
    pub method: String,
    pub content_type: String,
    pub sha256: String,
    pub size: i64,
}

/// Records an uploaded file, or a pending media id when `sha256` is `None`.
pub async fn insert_media<'e>(e: impl Exec<'e>, m: &Media) -> Result<()> {
    sqlx::query(
        "INSERT INTO media (origin, media_id, uploader, content_type, filename, size, sha256, created_ts, \
         expires_ts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (origin, media_id) DO NOTHING",
    )
    .bind(&m.origin)
    .bind(&m.media_id)
    .bind(&m.uploader)
    .bind(&m.content_type)
    .bind(&m.filename)
    .bind(m.size)
    .bind(&m.sha256)
    .bind(m.created_ts)
    .bind(m.expires_ts)
    .execute(e)
    .await?;
    Ok(())
}

type MediaRow = (String, String, String, Option<String>, Option<String>, Option<i64>, Option<String>, i64, Option<i64>);

pub async fn get_media<'e>(e: impl Exec<'e>, origin: &str, media_id: &str) -> Result<Option<Media>> {
    let row: Option<MediaRow> = sqlx::query_as(
        "SELECT origin, media_id, uploader, content_type, filename, size, sha256, created_ts, expires_ts \
         FROM media WHERE origin = $1 AND media_id = $2",
    )
    .bind(origin)
    .bind(media_id)
    .fetch_optional(e)
    .await?;
    Ok(row.map(|r| Media {
        origin: r.0,
        media_id: r.1,
        uploader: r.2,
        content_type: r.3,
        filename: r.4,
        size: r.5,
        sha256: r.6,
        created_ts: r.7,
        expires_ts: r.8,
    }))
}

/// Fills in a pending media id. Returns false when it was no longer pending (already uploaded).
pub async fn complete_upload<'e>(
    e: impl Exec<'e>,
    origin: &str,
    media_id: &str,
    content_type: Option<&str>,
    filename: Option<&str>,
    size: i64,
    sha256: &str,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE media SET content_type = $3, filename = $4, size = $5, sha256 = $6, expires_ts = NULL \
         WHERE origin = $1 AND media_id = $2 AND sha256 IS NULL",
    )
    .bind(origin)
    .bind(media_id)
    .bind(content_type)
    .bind(filename)
    .bind(size)
    .bind(sha256)
    .execute(e)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// (bytes uploaded, media ids pending and not expired at `now`) of a user.
pub async fn usage<'e>(e: impl Exec<'e>, uploader: &str, now: i64) -> Result<(i64, i64)> {
    // SUM is NUMERIC on PostgreSQL: cast back to the BIGINT both backends decode.
    let (bytes, pending): (i64, i64) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN sha256 IS NULL AND expires_ts > $2 THEN 1 ELSE 0 END), 0) AS BIGINT) \
         FROM media WHERE uploader = $1",
    )
    .bind(uploader)
    .bind(now)
    .fetch_one(e)
    .await?;
    Ok((bytes, pending))
}

pub async fn get_thumbnail<'e>(
    e: impl Exec<'e>,
    origin: &str,
    media_id: &str,
    width: i64,
    height: i64,
    method: &str,
) -> Result<Option<Thumbnail>> {
    let row: Option<(i64, i64, String, String, String, i64)> = sqlx::query_as(
        "SELECT width, height, method, content_type, sha256, size FROM media_thumbnails \
         WHERE origin = $1 AND media_id = $2 AND width = $3 AND height = $4 AND method = $5",
    )
    .bind(origin)
    .bind(media_id)
    .bind(width)
    .bind(height)
    .bind(method)
    .fetch_optional(e)
    .await?;
    Ok(row.map(|r| Thumbnail { width: r.0, height: r.1, method: r.2, content_type: r.3, sha256: r.4, size: r.5 }))
}

pub async fn insert_thumbnail<'e>(e: impl Exec<'e>, origin: &str, media_id: &str, t: &Thumbnail) -> Result<()> {
    sqlx::query(
        "INSERT INTO media_thumbnails (origin, media_id, width, height, method, content_type, sha256, size) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
    )
    .bind(origin)
    .bind(media_id)
    .bind(t.width)
    .bind(t.height)
    .bind(&t.method)
    .bind(&t.content_type)
    .bind(&t.sha256)
    .bind(t.size)
    .execute(e)
    .await?;
    Ok(())
}

/// A media item as the admin API lists it, with its quarantine and protection.
#[derive(Clone, Debug)]
pub struct AdminMedia {
    pub media_id: String,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub size: Option<i64>,
    pub created_ts: i64,
    pub quarantined_by: Option<String>,
    pub protected: bool,
}

type AdminRow = (String, Option<String>, Option<String>, Option<i64>, i64, Option<String>, i64);

const ADMIN_COLUMNS: &str = "m.media_id, m.content_type, m.filename, m.size, m.created_ts, \
     q.quarantined_by, CASE WHEN p.media_id IS NULL THEN 0 ELSE 1 END \
     FROM media m LEFT JOIN media_quarantine q ON q.origin = m.origin AND q.media_id = m.media_id \
     LEFT JOIN media_protected p ON p.media_id = m.media_id AND m.uploader <> ''";

fn admin_media(r: AdminRow) -> AdminMedia {
    AdminMedia {
        media_id: r.0,
        content_type: r.1,
        filename: r.2,
        size: r.3,
        created_ts: r.4,
        quarantined_by: r.5,
        protected: crate::flag(r.6),
    }
}

/// The columns a user's media may be ordered by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MediaOrder {
    #[default]
    Created,
    MediaId,
    Name,
    Size,
    Type,
    Quarantined,
    Protected,
}

impl MediaOrder {
    fn column(self) -> &'static str {
        match self {
            MediaOrder::Created => "m.created_ts",
            MediaOrder::MediaId => "m.media_id",
            MediaOrder::Name => "m.filename",
            MediaOrder::Size => "m.size",
            MediaOrder::Type => "m.content_type",
            MediaOrder::Quarantined => "q.quarantined_by",
            MediaOrder::Protected => "p.media_id",
        }
    }
}

/// A page of the media a user uploaded (done uploads), and how many there are.
pub async fn user_media<'e, E: Exec<'e> + Copy>(
    e: E,
    uploader: &str,
    order: MediaOrder,
    descending: bool,
    from: i64,
    limit: i64,
) -> Result<(Vec<AdminMedia>, i64)> {
    let dir = if descending { "DESC" } else { "ASC" };
    let rows: Vec<AdminRow> = sqlx::query_as(&format!(
        "SELECT {ADMIN_COLUMNS} WHERE m.uploader = $1 AND m.sha256 IS NOT NULL \
         ORDER BY {} {dir}, m.media_id {dir} LIMIT $2 OFFSET $3",
        order.column()
    ))
    .bind(uploader)
    .bind(limit)
    .bind(from)
    .fetch_all(e)
    .await?;
    let (total,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM media WHERE uploader = $1 AND sha256 IS NOT NULL")
        .bind(uploader)
        .fetch_one(e)
        .await?;
    Ok((rows.into_iter().map(admin_media).collect(), total))
}

/// The ids of the media a user uploaded (done uploads).
pub async fn uploads_of<'e>(e: impl Exec<'e>, uploader: &str) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT media_id FROM media WHERE uploader = $1 AND sha256 IS NOT NULL ORDER BY created_ts, media_id",
    )
    .bind(uploader)
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Local media uploaded before `before_ts` and larger than `size_gt` bytes, not protected.
pub async fn local_media_before<'e>(
    e: impl Exec<'e>,
    origin: &str,
    before_ts: i64,
    size_gt: i64,
) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT m.media_id FROM media m WHERE m.origin = $1 AND m.created_ts < $2 AND COALESCE(m.size, 0) > $3 \
         AND NOT EXISTS (SELECT 1 FROM media_protected p WHERE p.media_id = m.media_id) ORDER BY m.media_id",
    )
    .bind(origin)
    .bind(before_ts)
    .bind(size_gt)
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Whether a media item is quarantined.
pub async fn quarantined<'e>(e: impl Exec<'e>, origin: &str, media_id: &str) -> Result<bool> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM media_quarantine WHERE origin = $1 AND media_id = $2")
        .bind(origin)
        .bind(media_id)
        .fetch_optional(e)
        .await?;
    Ok(row.is_some())
}

/// Quarantines a media item unless it is protected; answers whether it is quarantined now
/// (and was not before).
pub async fn quarantine<'e>(e: impl Exec<'e>, origin: &str, media_id: &str, by: &str, ts: i64) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO media_quarantine (origin, media_id, quarantined_by, quarantined_ts) \
         SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM media_protected p, media m \
         WHERE p.media_id = $2 AND m.media_id = $2 AND m.origin = $1 AND m.uploader <> '') \
         ON CONFLICT (origin, media_id) DO NOTHING",
    )
    .bind(origin)
    .bind(media_id)
    .bind(by)
    .bind(ts)
    .execute(e)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn unquarantine<'e>(e: impl Exec<'e>, origin: &str, media_id: &str) -> Result<()> {
    sqlx::query("DELETE FROM media_quarantine WHERE origin = $1 AND media_id = $2")
        .bind(origin)
        .bind(media_id)
        .execute(e)
        .await?;
    Ok(())
}

pub async fn set_protected<'e>(e: impl Exec<'e>, media_id: &str, protected: bool) -> Result<()> {
    let sql = if protected {
        "INSERT INTO media_protected (media_id) VALUES ($1) ON CONFLICT (media_id) DO NOTHING"
    } else {
        "DELETE FROM media_protected WHERE media_id = $1"
    };
    sqlx::query(sql).bind(media_id).execute(e).await?;
    Ok(())
}
