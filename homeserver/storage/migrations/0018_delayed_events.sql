-- Delayed events (MSC4140): events a client scheduled, sent by the server when their delay
-- passes unless restarted or cancelled first. A row stays after it is finalised (sent,
-- cancelled, or failed) so that clients can read the outcome, until it is pruned.
CREATE TABLE delayed_events (
    delay_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT,
    room_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    -- NULL for a message-like event.
    state_key TEXT,
    content TEXT NOT NULL,
    delay_ms BIGINT NOT NULL,
    running_since BIGINT NOT NULL,
    -- running_since + delay_ms: when it is to be sent.
    send_ts BIGINT NOT NULL,
    -- scheduled | sending | send | cancel | error
    status TEXT NOT NULL,
    -- action | delay: what finalised it.
    reason TEXT,
    event_id TEXT,
    -- The standard error body (JSON) that prevented sending.
    error TEXT,
    finalised_ts BIGINT
);
CREATE INDEX delayed_events_due ON delayed_events (status, send_ts);
CREATE INDEX delayed_events_user ON delayed_events (user_id, send_ts);
CREATE UNIQUE INDEX delayed_events_txn ON delayed_events (user_id, device_id, txn_id);
