-- name: try_lock_leadership
SELECT pg_try_advisory_lock(%(class_id)s, %(role_id)s);

-- name: record_leader
INSERT INTO forge_leaders (role, node_id, since) VALUES (%(role)s, %(node_id)s, now())
ON CONFLICT (role) DO UPDATE SET node_id = excluded.node_id, since = excluded.since;

-- name: check_leadership
-- Also proves the lock session is alive: a lost session would fail this round trip.
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
  AND classid = %(class_id)s AND objid = %(role_id)s AND objsubid = 2;

-- name: resign_leadership
WITH gone AS (DELETE FROM forge_leaders WHERE role = %(role)s AND node_id = %(node_id)s)
SELECT pg_advisory_unlock(%(class_id)s, %(role_id)s),
       pg_notify('forge_leader', %(role)s);
