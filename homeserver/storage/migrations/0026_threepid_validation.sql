-- Addresses this server validates itself (`[email]`): the token mailed to an address, and when
-- the link was followed. A session is found again by its client secret and address (a client
-- asking again gets the same one), and used by its id with its secret.
CREATE TABLE threepid_validation (
    session_id TEXT PRIMARY KEY NOT NULL,
    client_secret TEXT NOT NULL,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    token TEXT NOT NULL,
    send_attempt BIGINT NOT NULL,
    next_link TEXT,
    created_ts BIGINT NOT NULL,
    validated_ts BIGINT
);
CREATE INDEX threepid_validation_secret ON threepid_validation (client_secret, medium, address);
