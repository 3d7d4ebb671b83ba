-- name: list_live_triggers
SELECT c.oid::regclass::text AS name FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
WHERE t.tgname = 'forge_live_change';

-- name: changes_since
-- The tables written by transactions that committed after the snapshot `since` was taken:
-- those that were running then (its xip list) and those that began after (xid >= its xmax),
-- both found through the index. NULL `since`: none, only the snapshot to start from.
SELECT pg_current_snapshot()::text AS snapshot, pg_postmaster_start_time() AS started,
       array(SELECT DISTINCT relid::bigint FROM forge_live_changes
             WHERE xid >= pg_snapshot_xmax(%(since)s::pg_snapshot)
                OR xid = ANY(array(SELECT pg_snapshot_xip(%(since)s::pg_snapshot)))) AS tables;

-- name: prune_changes
-- Changes committed before the snapshot `before`, which every reader has seen since.
DELETE FROM forge_live_changes WHERE pg_visible_in_snapshot(xid, %(before)s::pg_snapshot);

-- name: current_snapshot
SELECT pg_current_snapshot()::text;

-- name: resolve_table
SELECT to_regclass(%(name)s)::oid AS oid, to_regclass(%(name)s)::text AS name;

-- name: create_ticket
WITH expired AS (DELETE FROM forge_live_tickets WHERE expires_at < now())
INSERT INTO forge_live_tickets (digest, claims, expires_at)
VALUES (%(digest)s, %(claims)s, now() + make_interval(secs => %(ttl_secs)s));

-- name: use_ticket
DELETE FROM forge_live_tickets WHERE digest = %(digest)s AND expires_at >= now()
RETURNING claims;

-- name: open_session
INSERT INTO forge_live_sessions (id, node_id, pid, channel, identity)
VALUES (%(id)s, %(node_id)s, %(pid)s, %(channel)s, %(identity)s);

-- name: list_node_sessions
SELECT id, pid FROM forge_live_sessions WHERE node_id = %(node_id)s;

-- name: close_sessions
DELETE FROM forge_live_sessions WHERE id = ANY(%(ids)s);

-- name: find_session
SELECT id, channel, identity,
       (SELECT count(*) FROM forge_live_subscriptions s
        WHERE s.session_id = l.id AND s.id <> %(subscription_id)s) AS watching
FROM forge_live_sessions l WHERE id = %(id)s;

-- name: add_subscription
INSERT INTO forge_live_subscriptions (session_id, id, function, args, job_id, claims)
VALUES (%(session_id)s, %(id)s, %(function)s, %(args)s, %(job_id)s, %(claims)s)
ON CONFLICT (session_id, id) DO UPDATE
SET function = excluded.function, args = excluded.args, job_id = excluded.job_id,
    claims = excluded.claims, created_at = now();

-- name: remove_subscription
DELETE FROM forge_live_subscriptions WHERE session_id = %(session_id)s AND id = %(id)s
    AND (%(created_at)s::timestamptz IS NULL OR created_at = %(created_at)s);

-- name: list_subscriptions
SELECT id, function, args, job_id, claims, created_at FROM forge_live_subscriptions
WHERE session_id = %(session_id)s;

-- name: wake_session
SELECT pg_notify(%(channel)s, %(session_id)s);
