-- Live queries (see live.py). A statement on a table that a live query reads NOTIFYs
-- forge_live with the table's oid; forge-node installs this trigger function on each declared
-- table at start (live.sync_triggers), and drops it from tables no longer declared.
CREATE FUNCTION forge_live_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('forge_live', TG_RELID::text);
    RETURN NULL;
END
$$;

-- A browser's event stream, held by one gateway worker, which LISTENs on `channel`.
CREATE TABLE forge_live_sessions (
    id          text        PRIMARY KEY,
    node_id     uuid        NOT NULL REFERENCES forge_nodes (id) ON DELETE CASCADE,
    pid         integer     NOT NULL,
    channel     text        NOT NULL,
    identity    text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX forge_live_sessions_node ON forge_live_sessions (node_id);

-- What a session watches: a live query (function, args) or a job (job_id), with the claims
-- of the token that subscribed, which the query runs with.
CREATE TABLE forge_live_subscriptions (
    session_id  text        NOT NULL REFERENCES forge_live_sessions (id) ON DELETE CASCADE,
    id          text        NOT NULL,
    function    text,
    args        jsonb,
    job_id      bigint,
    claims      jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, id)
);

-- One-use tickets for EventSource, which cannot send an Authorization header: only the
-- ticket's SHA-256 is stored, with the claims of the token that asked for it.
CREATE TABLE forge_live_tickets (
    digest      bytea       PRIMARY KEY,
    claims      jsonb       NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX forge_live_tickets_expiry ON forge_live_tickets (expires_at);
