-- Crisis cells: a space and its rooms, activated from a template, stood down in one step.
CREATE TABLE crisis_cells (
    cell_id TEXT PRIMARY KEY,          -- the space's room id
    slug TEXT NOT NULL UNIQUE,         -- in aliases and references
    name TEXT NOT NULL,
    template TEXT NOT NULL,
    coordinator TEXT NOT NULL,
    status TEXT NOT NULL,              -- active | stood_down
    created_ts BIGINT NOT NULL,
    stood_down_ts BIGINT,
    retention TEXT NOT NULL,
    -- The closed log's signed record (JSON), once stood down.
    closing_record TEXT,
    -- pending: handed to archiving, which has not taken it yet.
    archive_status TEXT
);
CREATE TABLE crisis_rooms (
    room_id TEXT PRIMARY KEY,
    cell_id TEXT NOT NULL,
    room_key TEXT NOT NULL,
    role TEXT NOT NULL,
    -- Its place in the template (the space itself first, at 0).
    position BIGINT NOT NULL
);
CREATE INDEX crisis_rooms_cell ON crisis_rooms (cell_id);
-- The main courante: each message of a cell's log room, sealed, in order.
CREATE TABLE crisis_log (
    cell_id TEXT NOT NULL,
    number BIGINT NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    author TEXT NOT NULL,
    record TEXT NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (cell_id, number)
);
-- Every version of a cell's situation report.
CREATE TABLE crisis_sitreps (
    cell_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    author TEXT NOT NULL,
    body TEXT NOT NULL,
    event_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (cell_id, version)
);
