-- Rooms a device peeks into without joining them (MSC2753 `POST /peek/{roomIdOrAlias}`): the
-- device's `/sync` shows them under `rooms.peek` until it leaves off (`unpeek`), its user
-- joins, or the room stops being world readable. `since`: the stream position the peek took,
-- so that the next sync shows the room whole, as a newly joined one.
CREATE TABLE room_peeks (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    since BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, room_id)
);
