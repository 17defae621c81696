-- The media repository: metadata here, file contents on disk, content-addressed by SHA-256.

CREATE TABLE media (
    -- The server part of the mxc:// URI (this server for local uploads).
    origin TEXT NOT NULL,
    media_id TEXT NOT NULL,
    uploader TEXT NOT NULL,
    content_type TEXT,
    filename TEXT,
    -- NULL while a media id created by /media/v1/create waits for its upload.
    size BIGINT,
    sha256 TEXT,
    created_ts BIGINT NOT NULL,
    -- When a created media id that was never uploaded stops being usable.
    expires_ts BIGINT,
    PRIMARY KEY (origin, media_id)
);
CREATE INDEX media_uploader ON media (uploader);
CREATE INDEX media_sha256 ON media (sha256);

-- Thumbnails made on demand, one per (media, size, method), cached on disk.
CREATE TABLE media_thumbnails (
    origin TEXT NOT NULL,
    media_id TEXT NOT NULL,
    width BIGINT NOT NULL,
    height BIGINT NOT NULL,
    method TEXT NOT NULL,
    content_type TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (origin, media_id, width, height, method)
);
