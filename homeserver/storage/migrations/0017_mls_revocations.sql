-- Devices of this server whose removal from a partner's MLS group (a DR room another server
-- orders) could not be asked for yet: their approval was withdrawn, or they were deleted, while
-- that server was unreachable. The server asks again until the orderer answers.
CREATE TABLE mls_revocations (
    server TEXT NOT NULL,
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (server, room_id, user_id, device_id)
);
