-- Cross-signing keys and signatures, and server-side key backup (encrypted room keys).

CREATE TABLE cross_signing_keys (
    user_id TEXT NOT NULL,
    key_type TEXT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Signatures a user made over another user's master key (with their user-signing key); only
-- the signer sees them.
CREATE TABLE cross_signing_signatures (
    signer TEXT NOT NULL,
    target_user TEXT NOT NULL,
    target_key_id TEXT NOT NULL,
    signing_key_id TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (signer, target_user, target_key_id, signing_key_id)
);

CREATE TABLE backup_versions (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    algorithm TEXT NOT NULL,
    etag BIGINT NOT NULL,
    deleted BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, version)
);

CREATE TABLE backup_keys (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);
