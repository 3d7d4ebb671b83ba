-- The cluster registry: one row per running node, kept fresh by its supervisor's heartbeat.
-- status: starting -> active <-> degraded -> draining; any of them -> dead (heartbeat too old).
CREATE TABLE forge_nodes (
    id              uuid        PRIMARY KEY,
    hostname        text        NOT NULL,
    pid             integer     NOT NULL,
    roles           text[]      NOT NULL,
    capabilities    text[]      NOT NULL,
    status          text        NOT NULL
        CHECK (status IN ('starting', 'active', 'degraded', 'draining', 'dead')),
    version         text        NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    last_heartbeat  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX forge_nodes_last_heartbeat ON forge_nodes (last_heartbeat)
    WHERE status <> 'dead';

-- Who leads each leader role (the lock itself is a session advisory lock); for `status`.
CREATE TABLE forge_leaders (
    role     text        PRIMARY KEY,
    node_id  uuid        NOT NULL,
    since    timestamptz NOT NULL DEFAULT now()
);
