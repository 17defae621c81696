-- The portal's organisation: each account's clearance (NP or DR) and kind (agent or external),
-- its primary functional group, and who set the clearance and when; the same for the DR flag
-- of devices (approved terminals). Every change is also kept in clearance_log.

ALTER TABLE users ADD COLUMN clearance TEXT NOT NULL DEFAULT 'NP';
ALTER TABLE users ADD COLUMN account_kind TEXT NOT NULL DEFAULT 'agent';
ALTER TABLE users ADD COLUMN primary_group TEXT;
ALTER TABLE users ADD COLUMN clearance_set_by TEXT;
ALTER TABLE users ADD COLUMN clearance_set_ts BIGINT;

ALTER TABLE devices ADD COLUMN dr_set_by TEXT;
ALTER TABLE devices ADD COLUMN dr_set_ts BIGINT;

CREATE TABLE clearance_log (
    id BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    -- Empty for the user's own clearance, else the device whose DR flag changed.
    device_id TEXT NOT NULL,
    level TEXT NOT NULL,
    set_by TEXT NOT NULL,
    set_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, id)
);
