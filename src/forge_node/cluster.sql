-- name: register_node
INSERT INTO forge_nodes (id, hostname, pid, roles, capabilities, status, version)
VALUES (%(id)s, %(hostname)s, %(pid)s, %(roles)s, %(capabilities)s, %(status)s, %(version)s)
ON CONFLICT (id) DO UPDATE
SET status = excluded.status, last_heartbeat = now();

-- name: heartbeat_node
-- A node whose row says dead (or is gone) gets no row back and must register again.
UPDATE forge_nodes
SET last_heartbeat = now(), status = %(status)s, heartbeat_latency_ms = %(latency_ms)s
WHERE id = %(id)s AND status <> 'dead'
RETURNING id;

-- name: record_restarts
UPDATE forge_nodes SET restarts = %(restarts)s WHERE id = %(id)s;

-- name: get_heartbeat_latency
SELECT heartbeat_latency_ms FROM forge_nodes WHERE id = %(id)s;

-- name: node_status
SELECT status FROM forge_nodes WHERE id = %(id)s;

-- name: deregister_node
DELETE FROM forge_nodes WHERE id = %(id)s;

-- name: try_lock_reaper
-- One reaper at a time across the cluster; the others skip this round.
SELECT pg_try_advisory_xact_lock(%(key)s);

-- name: mark_dead_nodes
UPDATE forge_nodes SET status = 'dead'
WHERE status <> 'dead' AND last_heartbeat < now() - make_interval(secs => %(threshold)s)
RETURNING id, hostname, pid, extract(epoch FROM now() - last_heartbeat)::float8 AS silent_secs;

-- name: forget_dead_nodes
DELETE FROM forge_nodes
WHERE status = 'dead' AND last_heartbeat < now() - make_interval(secs => %(after)s);

-- name: list_nodes
-- A node silent for longer than the threshold is shown dead even before a reaper marks it
-- (the last node of a cluster has nobody left to mark it).
SELECT id::text, hostname, pid, roles, capabilities,
       CASE WHEN status <> 'dead'
                 AND last_heartbeat < now() - make_interval(secs => %(threshold)s)
            THEN 'dead' ELSE status END AS status,
       version, started_at, restarts,
       round(extract(epoch FROM now() - last_heartbeat)::numeric, 1)::float8
           AS heartbeat_age_secs
FROM forge_nodes
ORDER BY hostname, started_at;

-- name: list_leaders
SELECT l.role, l.node_id::text, l.since
FROM forge_leaders l JOIN forge_nodes n ON n.id = l.node_id
WHERE n.status <> 'dead' AND n.last_heartbeat >= now() - make_interval(secs => %(threshold)s)
ORDER BY l.role;
