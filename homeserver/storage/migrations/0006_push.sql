-- Notifications: what each event's push rules decided for each local user it notifies, and
-- the pushers that deliver them to push gateways.

CREATE TABLE event_push_actions (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    -- 'main', or the root of the thread the event belongs to.
    thread_id TEXT NOT NULL,
    highlight BIGINT NOT NULL,
    -- The rule's actions, as JSON.
    actions TEXT NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, stream_ordering)
);
CREATE INDEX event_push_actions_room ON event_push_actions (user_id, room_id, stream_ordering);

CREATE TABLE pushers (
    user_id TEXT NOT NULL,
    -- The access token's device when the pusher was set.
    device_id TEXT,
    kind TEXT NOT NULL,
    app_id TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    app_display_name TEXT NOT NULL,
    device_display_name TEXT NOT NULL,
    profile_tag TEXT,
    lang TEXT NOT NULL,
    -- The `data` object (url, format, ...), as JSON.
    data TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    -- The last notification delivered (or given up on), so that a restart resumes after it.
    last_stream_ordering BIGINT NOT NULL,
    PRIMARY KEY (app_id, pushkey, user_id)
);
