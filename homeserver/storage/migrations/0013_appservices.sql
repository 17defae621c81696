-- Events waiting to be pushed to an application service (application-service spec, "Pushing
-- events"): written in the transaction that stores each event, removed once the service has
-- acknowledged the transaction that carried it, so that nothing is lost across a restart.
CREATE TABLE appservice_outbox (
    appservice TEXT NOT NULL,
    -- The event's stream position; a transaction's id is the position of its last event.
    position BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (appservice, position)
);

-- The rooms an application service publishes in its own lists of the room directory, one per
-- network it bridges (`PUT /directory/list/appservice/{networkId}/{roomId}`).
CREATE TABLE appservice_room_list (
    appservice TEXT NOT NULL,
    network_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (appservice, network_id, room_id)
);
