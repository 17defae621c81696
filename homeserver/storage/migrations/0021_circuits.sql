-- Signature circuits (e-parapheur): a draft that goes through approvals in order, then the
-- signature of an authorised signatory of its group, before it is dispatched; the
-- signatories of each functional group; and delegations for absences.

CREATE TABLE circuits (
    circuit_id TEXT NOT NULL PRIMARY KEY,
    group_slug TEXT NOT NULL,
    drafter TEXT NOT NULL,
    -- The composition (JSON), as the drafter last submitted it.
    draft TEXT NOT NULL,
    -- The approvers in order, and the signatory (JSON array; user id).
    approvers TEXT NOT NULL,
    signatory TEXT NOT NULL,
    -- pending | returned | signed
    status TEXT NOT NULL,
    -- The index of the approver awaited (= the number of approvers: the signatory's turn).
    step BIGINT NOT NULL,
    -- Every decision, each signed by who gave it (JSON array).
    chain TEXT NOT NULL,
    -- The notice in the group's correspondence room that reactions act on.
    room_id TEXT NOT NULL,
    event_id TEXT,
    reference TEXT,
    created_ts BIGINT NOT NULL,
    updated_ts BIGINT NOT NULL
);
CREATE INDEX circuits_event ON circuits (event_id);

CREATE TABLE group_signatories (
    group_slug TEXT NOT NULL,
    user_id TEXT NOT NULL,
    title TEXT NOT NULL,
    PRIMARY KEY (group_slug, user_id)
);

-- Who acts for whom, from when until when (never deleted: the record of delegations).
CREATE TABLE delegations (
    delegation_id TEXT NOT NULL PRIMARY KEY,
    delegator TEXT NOT NULL,
    delegate TEXT NOT NULL,
    from_ts BIGINT NOT NULL,
    until_ts BIGINT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX delegations_delegate ON delegations (delegate, until_ts);
