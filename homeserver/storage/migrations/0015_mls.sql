-- MLS groups of DR rooms, with this server as their delivery service. Everything here is
-- public MLS material (key packages, ratchet trees, commits, proposals), base64-encoded: no
-- secret and no message content is ever stored (application messages are room events whose
-- content is ciphertext).

-- Key packages devices uploaded: each is handed out once, except a device's last-resort one,
-- which stays until replaced.
CREATE TABLE mls_key_packages (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    reference TEXT NOT NULL,
    last_resort BIGINT NOT NULL,
    key_package TEXT NOT NULL,
    uploaded_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, reference)
);

-- A room's group as the delivery service tracks it: its epoch and public state.
CREATE TABLE mls_groups (
    room_id TEXT PRIMARY KEY NOT NULL,
    epoch BIGINT NOT NULL,
    state TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);

-- The handshake messages of each group in the order the delivery service accepted them: the
-- server's proposals of an epoch, then the commit that ends it. Members catch up from here.
CREATE TABLE mls_handshakes (
    room_id TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    sender TEXT NOT NULL,
    message TEXT NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (room_id, epoch, seq)
);
