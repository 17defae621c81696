-- Retention and legal holds: policies per room and kind of content, the holds administrators
-- place and lift (rows are never deleted: they are the record of every hold and release), the
-- rooms each hold covers, the originals of held events that were redacted (kept for the
-- archive), and what each purge did.

-- A room's lifetimes by kind of content, in milliseconds; NULL: the server's default for the
-- room's classification.
CREATE TABLE retention_policies (
    room_id TEXT NOT NULL PRIMARY KEY,
    messages_ms BIGINT,
    media_ms BIGINT,
    correspondence_ms BIGINT,
    set_by TEXT NOT NULL,
    set_ts BIGINT NOT NULL
);

-- scope: room (target a room id), group (a functional group's slug) or user (a user id).
CREATE TABLE legal_holds (
    hold_id TEXT NOT NULL PRIMARY KEY,
    scope TEXT NOT NULL,
    target TEXT NOT NULL,
    reason TEXT NOT NULL,
    placed_by TEXT NOT NULL,
    placed_ts BIGINT NOT NULL,
    released_by TEXT,
    released_ts BIGINT,
    release_reason TEXT
);

-- The rooms a room or group hold covers, resolved when it is placed.
CREATE TABLE legal_hold_rooms (
    hold_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (hold_id, room_id)
);
CREATE INDEX legal_hold_rooms_room ON legal_hold_rooms (room_id);

-- An event under hold, as it was before its redaction.
CREATE TABLE held_originals (
    event_id TEXT NOT NULL PRIMARY KEY,
    room_id TEXT NOT NULL,
    json TEXT NOT NULL,
    redacted_by TEXT NOT NULL
);

CREATE TABLE purge_runs (
    run_id TEXT NOT NULL PRIMARY KEY,
    started_ts BIGINT NOT NULL,
    finished_ts BIGINT,
    events BIGINT NOT NULL,
    media BIGINT NOT NULL,
    records BIGINT NOT NULL,
    kept_on_hold BIGINT NOT NULL
);

-- Each event a purge emptied; search_cleared = 1 once the search index forgot it.
CREATE TABLE purged_events (
    event_id TEXT NOT NULL PRIMARY KEY,
    room_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    search_cleared BIGINT NOT NULL
);
CREATE INDEX purged_events_search ON purged_events (search_cleared);
