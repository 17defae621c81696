-- What administrators did through the administration APIs (Synapse's and the portal's): who,
-- when, what and to whom, for other administrators to read.
CREATE TABLE admin_audit (
    id BIGINT PRIMARY KEY NOT NULL,
    ts BIGINT NOT NULL,
    admin TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    -- The request's parameters that matter (JSON), never a password.
    detail TEXT
);

-- Rooms an administrator blocked: no local user may join them or be invited to them (the
-- room need not be known here yet).
CREATE TABLE blocked_rooms (
    room_id TEXT PRIMARY KEY NOT NULL,
    blocked_by TEXT NOT NULL,
    blocked_ts BIGINT NOT NULL
);
