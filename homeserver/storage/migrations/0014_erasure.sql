-- Accounts deactivated with `erase: true`: their events are shown redacted to whoever was not
-- in the room when they were sent, and to other servers.
CREATE TABLE erased_users (
    user_id TEXT PRIMARY KEY NOT NULL
);
