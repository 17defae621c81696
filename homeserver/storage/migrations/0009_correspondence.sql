-- Formal correspondence (telegrams, diplomatic notes, formal letters): the signed records,
-- their reference numbers, where each was delivered, the action items of addressee groups,
-- the agents' journals and the tags they follow, and the signing keys of authors.

-- Authors' ed25519 keys. `secret` (base64 PKCS#8) is set when the server holds the key and
-- seals on the author's behalf; a key a client keeps has only its public half here.
CREATE TABLE correspondence_keys (
    user_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    secret TEXT,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, key_id)
);

-- The last reference number given per sending group and year.
CREATE TABLE correspondence_counters (
    group_slug TEXT NOT NULL,
    year BIGINT NOT NULL,
    last_number BIGINT NOT NULL,
    PRIMARY KEY (group_slug, year)
);

-- References handed out (to the server's sealing or to a client that signs itself); a
-- reference is dispatched at most once (the primary key of `correspondence`).
CREATE TABLE correspondence_references (
    reference TEXT NOT NULL PRIMARY KEY,
    group_slug TEXT NOT NULL,
    author TEXT NOT NULL,
    reserved_ts BIGINT NOT NULL
);

CREATE TABLE correspondence (
    reference TEXT NOT NULL PRIMARY KEY,
    kind TEXT NOT NULL,
    group_slug TEXT NOT NULL,
    author TEXT NOT NULL,
    -- The device that asked the server to seal (NULL when the client signed itself).
    sealed_for_device TEXT,
    classification TEXT NOT NULL,
    subject TEXT NOT NULL,
    -- The signed record, canonical JSON.
    record TEXT NOT NULL,
    ts BIGINT NOT NULL
);

-- Every event that carries a correspondence: its copy in the sending group's room (origin), in
-- addressee groups' rooms (action, information), in communities (community), and the entries
-- of journals (journal_action, journal_interest).
CREATE TABLE correspondence_deliveries (
    reference TEXT NOT NULL,
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    role TEXT NOT NULL,
    -- The group concerned (addressee, or the one whose action item a journal entry shows).
    group_slug TEXT NOT NULL,
    PRIMARY KEY (reference, event_id)
);
CREATE INDEX correspondence_deliveries_event ON correspondence_deliveries (event_id);
CREATE INDEX correspondence_deliveries_group ON correspondence_deliveries (reference, group_slug, role);

-- What an addressee group must do with a correspondence for action.
CREATE TABLE correspondence_actions (
    reference TEXT NOT NULL,
    group_slug TEXT NOT NULL,
    status TEXT NOT NULL,
    assignee TEXT,
    updated_by TEXT,
    updated_ts BIGINT NOT NULL,
    PRIMARY KEY (reference, group_slug)
);

-- Each agent's journal room.
CREATE TABLE journals (
    user_id TEXT NOT NULL PRIMARY KEY,
    room_id TEXT NOT NULL UNIQUE
);

-- The interest tags each agent follows.
CREATE TABLE followed_tags (
    user_id TEXT NOT NULL,
    tag TEXT NOT NULL,
    PRIMARY KEY (user_id, tag)
);
CREATE INDEX followed_tags_tag ON followed_tags (tag);

-- Drafts composed in a correspondence room, by the event of the preview the service answered.
CREATE TABLE correspondence_drafts (
    preview_event_id TEXT NOT NULL PRIMARY KEY,
    room_id TEXT NOT NULL,
    author TEXT NOT NULL,
    device_id TEXT,
    draft TEXT NOT NULL,
    ts BIGINT NOT NULL
);
