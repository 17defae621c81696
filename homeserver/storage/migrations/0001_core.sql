-- Core schema: accounts, rooms, events, state, sync streams.
-- Integers are BIGINT, flags are BIGINT 0/1, JSON is TEXT: the same queries run on both backends.

CREATE TABLE users (
    user_id TEXT PRIMARY KEY NOT NULL,
    password_hash TEXT,
    displayname TEXT,
    avatar_url TEXT,
    is_admin BIGINT NOT NULL DEFAULT 0,
    is_guest BIGINT NOT NULL DEFAULT 0,
    deactivated BIGINT NOT NULL DEFAULT 0,
    created_ts BIGINT NOT NULL
);

CREATE TABLE devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    display_name TEXT,
    last_seen_ts BIGINT,
    last_seen_ip TEXT,
    -- Set by an administrator when the terminal is approved for restricted (DR) material.
    dr_cleared BIGINT NOT NULL DEFAULT 0,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE access_tokens (
    token TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    expires_ts BIGINT,
    refresh_token TEXT
);
CREATE INDEX access_tokens_device ON access_tokens (user_id, device_id);

CREATE TABLE refresh_tokens (
    token TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL
);
CREATE INDEX refresh_tokens_device ON refresh_tokens (user_id, device_id);

CREATE TABLE registration_tokens (
    token TEXT PRIMARY KEY NOT NULL,
    uses_allowed BIGINT,
    pending BIGINT NOT NULL DEFAULT 0,
    completed BIGINT NOT NULL DEFAULT 0,
    expiry_ts BIGINT
);

CREATE TABLE rooms (
    room_id TEXT PRIMARY KEY NOT NULL,
    room_version TEXT NOT NULL,
    creator TEXT NOT NULL,
    is_public BIGINT NOT NULL DEFAULT 0,
    created_ts BIGINT NOT NULL
);

-- Every persisted event, in the order this server accepted it (stream_ordering).
CREATE TABLE events (
    stream_ordering BIGINT PRIMARY KEY NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    event_type TEXT NOT NULL,
    state_key TEXT,
    depth BIGINT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    -- The state of the room after this event.
    state_group BIGINT NOT NULL,
    rel_type TEXT,
    relates_to TEXT,
    redacted_by TEXT,
    json TEXT NOT NULL
);
CREATE INDEX events_room_stream ON events (room_id, stream_ordering);
CREATE INDEX events_relates_to ON events (relates_to, rel_type);
CREATE INDEX events_member ON events (state_key, event_type, stream_ordering);

CREATE TABLE forward_extremities (
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

-- State snapshots as delta chains: a group holds its delta against prev_group.
CREATE TABLE state_groups (
    id BIGINT PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL,
    prev_group BIGINT,
    chain_length BIGINT NOT NULL
);
CREATE TABLE state_group_entries (
    state_group BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (state_group, event_type, state_key)
);

CREATE TABLE current_state (
    room_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    membership TEXT,
    stream_ordering BIGINT NOT NULL,
    PRIMARY KEY (room_id, event_type, state_key)
);
CREATE INDEX current_state_member ON current_state (state_key, event_type);

CREATE TABLE room_forgotten (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id)
);

CREATE TABLE event_txns (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

CREATE TABLE room_aliases (
    alias TEXT PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL,
    creator TEXT NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);

CREATE TABLE account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    data_type TEXT NOT NULL,
    content TEXT NOT NULL,
    stream_id BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, data_type)
);
CREATE INDEX account_data_stream ON account_data (user_id, stream_id);

CREATE TABLE receipts (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    stream_id BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id, receipt_type, thread_id)
);
CREATE INDEX receipts_stream ON receipts (room_id, stream_id);

CREATE TABLE filters (
    user_id TEXT NOT NULL,
    filter_id BIGINT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);

CREATE TABLE presence (
    user_id TEXT PRIMARY KEY NOT NULL,
    state TEXT NOT NULL,
    status_msg TEXT,
    last_active_ts BIGINT NOT NULL,
    stream_id BIGINT NOT NULL
);
CREATE INDEX presence_stream ON presence (stream_id);

-- Counters that must survive restarts (stream positions, state group ids, filter ids).
CREATE TABLE counters (
    name TEXT PRIMARY KEY NOT NULL,
    value BIGINT NOT NULL
);
