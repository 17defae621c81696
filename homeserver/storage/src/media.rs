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
