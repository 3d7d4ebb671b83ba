-- name: insert_job
-- An idempotency key already used by an unfinished job inserts nothing (see find_job_by_key).
INSERT INTO forge_jobs (type, args, capability, priority, max_attempts, timeout_secs, run_at,
                        idempotency_key, trace_context)
VALUES (%(type)s, %(args)s, %(capability)s, %(priority)s, %(max_attempts)s, %(timeout_secs)s,
        COALESCE(%(run_at)s, now()), %(idempotency_key)s, %(trace_context)s)
ON CONFLICT (idempotency_key)
    WHERE idempotency_key IS NOT NULL AND status IN ('pending', 'running') DO NOTHING
RETURNING id, pg_notify('forge_jobs', capability);

-- name: find_job_by_key
SELECT id FROM forge_jobs
WHERE idempotency_key = %(idempotency_key)s AND status IN ('pending', 'running');

-- name: insert_jobs
WITH inserted AS (
    INSERT INTO forge_jobs (type, args, capability, priority, max_attempts, timeout_secs, run_at,
                            trace_context)
    SELECT %(type)s, a.args, %(capability)s, %(priority)s, %(max_attempts)s, %(timeout_secs)s,
           COALESCE(%(run_at)s, now()), %(trace_context)s
    FROM unnest(%(args)s::jsonb[]) WITH ORDINALITY AS a(args, n)
    ORDER BY a.n
    RETURNING id
)
SELECT COALESCE(array_agg(id ORDER BY id), '{}'),
       pg_notify('forge_jobs', %(capability)s)
FROM inserted;

-- name: claim_jobs
-- One ordered index scan for the pool's capability, one for jobs for any worker ('*', only
-- in the pool that takes those), then the best of both. Rows locked but not chosen are
-- released at once: the statement is its own transaction.
WITH own AS (
    SELECT id, priority, run_at FROM forge_jobs
    WHERE status = 'pending' AND capability = %(capability)s AND run_at <= now()
    ORDER BY priority DESC, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), any_capability AS (
    SELECT id, priority, run_at FROM forge_jobs
    WHERE status = 'pending' AND capability = '*' AND %(take_any)s AND run_at <= now()
    ORDER BY priority DESC, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), chosen AS (
    SELECT id FROM (SELECT * FROM own UNION ALL SELECT * FROM any_capability) AS c
    ORDER BY priority DESC, run_at, id
    LIMIT %(limit)s
), claimed AS (
    UPDATE forge_jobs j
    SET status = 'running', node_id = %(node_id)s, attempts = j.attempts + 1,
        started_at = now(), progress = NULL, progress_message = NULL
    FROM chosen
    WHERE j.id = chosen.id
    RETURNING j.id, j.type, j.args, j.attempts, j.max_attempts, j.timeout_secs,
              j.cancel_requested, j.capability, j.trace_context, j.priority, j.run_at
)
SELECT id, type, args, attempts, max_attempts, timeout_secs, cancel_requested, capability,
       trace_context
FROM claimed
ORDER BY priority DESC, run_at, id;

-- name: complete_jobs
UPDATE forge_jobs j
SET status = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'completed' END,
    result = d.result, completed_at = now(), progress = CASE WHEN j.cancel_requested
                                                         THEN j.progress ELSE 100 END
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(results)s::jsonb[]) AS d(id, attempt, result)
WHERE j.id = d.id AND j.node_id = %(node_id)s AND j.attempts = d.attempt AND j.status = 'running'
RETURNING j.id, j.status;

-- name: retry_job
UPDATE forge_jobs
SET status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'pending' END,
    run_at = CASE WHEN cancel_requested THEN run_at
                  ELSE now() + make_interval(secs => %(delay_secs)s) END,
    completed_at = CASE WHEN cancel_requested THEN now() END,
    node_id = CASE WHEN cancel_requested THEN node_id END,
    last_error = %(error)s
WHERE id = %(id)s AND node_id = %(node_id)s AND attempts = %(attempt)s AND status = 'running'
RETURNING status;

-- name: bury_job
UPDATE forge_jobs
SET status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'dead' END,
    completed_at = now(), last_error = %(error)s
WHERE id = %(id)s AND node_id = %(node_id)s AND attempts = %(attempt)s AND status = 'running'
RETURNING status;

-- name: release_jobs
-- Claimed but not started, or not finished when a drain ran out of time: the attempt is
-- given back, as the job never had its chance.
UPDATE forge_jobs j
SET status = 'pending', node_id = NULL, attempts = j.attempts - 1, started_at = NULL
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS d(id, attempt)
WHERE j.id = d.id AND j.node_id = %(node_id)s AND j.attempts = d.attempt AND j.status = 'running'
RETURNING j.id;

-- name: reclaim_jobs_of_node
-- Jobs running on this node that its worker does not hold (`held`): left by a crashed
-- predecessor, or claimed by a statement whose answer the worker never got (the connection
-- broke after the commit).
UPDATE forge_jobs
SET status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'pending' END,
    completed_at = CASE WHEN attempts >= max_attempts THEN now() END,
    node_id = CASE WHEN attempts >= max_attempts THEN node_id END,
    last_error = %(error)s
WHERE status = 'running' AND node_id = %(node_id)s AND NOT (id = ANY(%(held)s))
RETURNING id, status;

-- name: try_xact_lock
-- The reclaimer and the cleaner each run on one node at a time; the others skip a round.
SELECT pg_try_advisory_xact_lock(%(key)s);

-- name: reclaim_jobs_of_dead_nodes
-- Running jobs whose node is dead or gone from the registry go back to pending (or dead once
-- the lost attempt was their last).
WITH orphans AS (
    SELECT j.id, j.node_id FROM forge_jobs j
    WHERE j.status = 'running'
      AND NOT EXISTS (SELECT 1 FROM forge_nodes n WHERE n.id = j.node_id AND n.status <> 'dead')
    FOR UPDATE
)
UPDATE forge_jobs j
SET status = CASE WHEN j.attempts >= j.max_attempts THEN 'dead' ELSE 'pending' END,
    completed_at = CASE WHEN j.attempts >= j.max_attempts THEN now() END,
    node_id = CASE WHEN j.attempts >= j.max_attempts THEN j.node_id END,
    last_error = 'node ' || j.node_id || ' was declared dead while running attempt '
                 || j.attempts || ' of this job'
FROM orphans o
WHERE j.id = o.id
RETURNING j.id, j.status, o.node_id::text;

-- name: list_cancel_requests
SELECT id FROM forge_jobs
WHERE status = 'running' AND node_id = %(node_id)s AND cancel_requested;

-- name: set_job_progress
UPDATE forge_jobs SET progress = %(percent)s, progress_message = %(message)s
WHERE id = %(id)s AND node_id = %(node_id)s AND attempts = %(attempt)s AND status = 'running';

-- name: cancel_job
-- A pending job is cancelled at once; a running one is asked to stop.
UPDATE forge_jobs
SET status = CASE WHEN status = 'pending' THEN 'cancelled' ELSE status END,
    completed_at = CASE WHEN status = 'pending' THEN now() ELSE completed_at END,
    cancel_requested = true
WHERE id = %(id)s AND status IN ('pending', 'running')
RETURNING status, pg_notify('forge_jobs_cancel', id::text);

-- name: retry_dead_job
UPDATE forge_jobs
SET status = 'pending', attempts = 0, run_at = now(), node_id = NULL, completed_at = NULL,
    started_at = NULL, cancel_requested = false, progress = NULL, progress_message = NULL
WHERE id = %(id)s AND status IN ('dead', 'cancelled')
RETURNING id, pg_notify('forge_jobs', capability);

-- name: get_job
SELECT id, type, status, attempts, max_attempts, capability, priority, node_id::text,
       progress, last_error, created_at, run_at, started_at, completed_at,
       progress_message, args, result
FROM forge_jobs WHERE id = %(id)s;

-- name: list_jobs
SELECT id, type, status, attempts, max_attempts, capability, priority, node_id::text,
       progress, last_error, created_at, run_at, started_at, completed_at
FROM forge_jobs
WHERE (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(type)s::text IS NULL OR type = %(type)s)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: queue_depths
SELECT capability,
       count(*) FILTER (WHERE status = 'pending') AS pending,
       count(*) FILTER (WHERE status = 'running') AS running,
       count(*) FILTER (WHERE status = 'dead') AS dead,
       round(extract(epoch FROM now() - min(run_at) FILTER (
           WHERE status = 'pending' AND run_at <= now()))::numeric, 1)::float8
           AS oldest_pending_age_secs
FROM forge_jobs
WHERE status IN ('pending', 'running', 'dead')
GROUP BY 1
ORDER BY 1;

-- name: delete_finished_jobs
DELETE FROM forge_jobs
WHERE id IN (SELECT id FROM forge_jobs
             WHERE status IN ('completed', 'dead', 'cancelled')
               AND completed_at < now() - make_interval(secs => %(retention_secs)s)
             ORDER BY completed_at
             LIMIT %(batch)s);

-- name: job_states
SELECT id, status, attempts, progress, progress_message FROM forge_jobs WHERE id = ANY(%(ids)s);
