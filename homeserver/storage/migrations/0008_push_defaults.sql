-- Notifications, compactly. Most members of a room share the spec's default push rules and are
-- not named by an event, so they all get the same outcome: it is written once per event
-- (event_push_defaults), for the local members joined when the event was sent, minus its
-- sender. event_push_actions keeps only the users whose outcome differs (named in the event,
-- invited by it, or with rules of their own); `notify` 0 there means "not notified" although
-- the default notifies.

CREATE TABLE event_push_defaults (
    room_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    highlight BIGINT NOT NULL,
    actions TEXT NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (room_id, stream_ordering)
);

ALTER TABLE event_push_actions ADD COLUMN notify BIGINT NOT NULL DEFAULT 1;
