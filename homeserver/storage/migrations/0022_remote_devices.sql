-- Other servers' users' device lists, kept for the users a local user shares a room with:
-- filled by a resync (`GET /_matrix/federation/v1/user/devices/{userId}`), moved on by each
-- `m.device_list_update` whose `prev_id` this server has seen, marked stale when one is
-- missed or a resync fails (then the next query resyncs, and answers the stale copy if the
-- other server is down).

CREATE TABLE remote_device_lists (
    user_id TEXT NOT NULL PRIMARY KEY,
    -- The other server's stream id of the last update taken in.
    stream_id BIGINT NOT NULL,
    -- 1: an update was missed or a resync failed; the next query resyncs.
    stale BIGINT NOT NULL,
    -- Cross-signing keys (JSON), as the other server gave them.
    master_key TEXT,
    self_signing_key TEXT,
    updated_ts BIGINT NOT NULL
);

CREATE TABLE remote_devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    -- The device's keys (JSON object; `{}` when it has none yet).
    device_keys TEXT NOT NULL,
    display_name TEXT,
    PRIMARY KEY (user_id, device_id)
);
