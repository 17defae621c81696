-- Rooms with threads are found without reading their other events: clients are shown a thread
-- root's summary (its bundled aggregation) only in such rooms.
CREATE INDEX events_room_threads ON events (room_id) WHERE rel_type = 'm.thread';

-- What users report to the server (client-server spec, "Reporting content"): an event, a room
-- or a user. Administrators read them all, a room's moderators those about their room.
CREATE TABLE reports (
    id BIGINT PRIMARY KEY NOT NULL,
    -- 'event', 'room' or 'user'.
    kind TEXT NOT NULL,
    reporter TEXT NOT NULL,
    room_id TEXT,
    event_id TEXT,
    -- The user reported, or the sender of the event reported.
    target_user TEXT,
    reason TEXT,
    -- From -100 (most offensive) to 0, for events.
    score BIGINT,
    received_ts BIGINT NOT NULL
);
CREATE INDEX reports_room ON reports (room_id, id);

-- The client a device last used (its User-Agent), beside where and when it was last seen:
-- administrators read them (`/admin/whois`).
ALTER TABLE devices ADD COLUMN last_seen_user_agent TEXT;

-- The e-mail addresses and phone numbers of accounts (`/account/3pid`): bound through an
-- identity server (`id_server` says which, to unbind there when removed).
CREATE TABLE user_threepids (
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    user_id TEXT NOT NULL,
    validated_at BIGINT NOT NULL,
    added_at BIGINT NOT NULL,
    id_server TEXT,
    PRIMARY KEY (medium, address)
);
CREATE INDEX user_threepids_user ON user_threepids (user_id);
