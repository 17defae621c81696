-- Rooms an administrator deleted (`DELETE /_synapse/admin/v2/rooms/{roomId}`): where each
-- deletion stands (shutting_down, purging, complete, failed) and what it did. A deletion
-- a stop interrupted is taken up again at start-up.
CREATE TABLE room_deletions (
    delete_id TEXT PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL,
    admin TEXT NOT NULL,
    status TEXT NOT NULL,
    block BIGINT NOT NULL,
    purge BIGINT NOT NULL,
    -- Purge even when members of this server could not be made to leave.
    force_purge BIGINT NOT NULL,
    error TEXT,
    -- JSON arrays of user ids and aliases.
    kicked_users TEXT NOT NULL,
    failed_to_kick_users TEXT NOT NULL,
    local_aliases TEXT NOT NULL,
    started_ts BIGINT NOT NULL,
    finished_ts BIGINT
);
CREATE INDEX room_deletions_room ON room_deletions (room_id, started_ts);

-- Users an administrator exempted from the request rate limit or gave one of their own
-- (`/_synapse/admin/v1/users/{userId}/override_ratelimit`); 0 and 0: no limit at all.
CREATE TABLE ratelimit_overrides (
    user_id TEXT PRIMARY KEY NOT NULL,
    messages_per_second BIGINT NOT NULL,
    burst_count BIGINT NOT NULL
);

-- Media an administrator quarantined: never served again (local or fetched from another
-- server), until released.
CREATE TABLE media_quarantine (
    origin TEXT NOT NULL,
    media_id TEXT NOT NULL,
    quarantined_by TEXT NOT NULL,
    quarantined_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, media_id)
);

-- Local media protected from quarantine (an administrator's own, a logo).
CREATE TABLE media_protected (
    media_id TEXT PRIMARY KEY NOT NULL
);

-- Users an administrator shadow-banned: what they send seems to succeed and reaches nobody.
CREATE TABLE shadow_banned_users (
    user_id TEXT PRIMARY KEY NOT NULL,
    banned_by TEXT NOT NULL,
    banned_ts BIGINT NOT NULL
);

-- Accounts linked to an identity at a single sign-on provider (Synapse's external ids).
CREATE TABLE user_external_ids (
    auth_provider TEXT NOT NULL,
    external_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (auth_provider, external_id)
);
CREATE INDEX user_external_ids_user ON user_external_ids (user_id);
