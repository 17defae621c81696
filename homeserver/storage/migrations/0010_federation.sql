-- Federation: events known outside the timeline, other servers' keys, the outbound queue and
-- the transactions already received.

-- Events of a room this server holds without placing them in its timeline: the state and auth
-- chain a join brings, the auth events fetched to check another event.
CREATE TABLE outliers (
    event_id TEXT PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL,
    json TEXT NOT NULL
);

-- Verify keys of other servers, as fetched (or pinned by configuration, which is never stored).
CREATE TABLE server_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    -- For old keys: when the key stopped being used.
    expired_ts BIGINT,
    PRIMARY KEY (server_name, key_id)
);

-- What waits to be sent to another server: PDUs (by event id) and EDUs (JSON), in order.
CREATE TABLE federation_outbox (
    id BIGINT PRIMARY KEY NOT NULL,
    destination TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX federation_outbox_destination ON federation_outbox (destination, id);

-- Transactions received, with the answer given (a retried transaction gets the same answer).
CREATE TABLE federation_txns (
    origin TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    response TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, txn_id)
);
