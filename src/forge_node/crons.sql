-- name: claim_tick
INSERT INTO forge_cron_ticks (cron, scheduled_for, node_id)
VALUES (%(cron)s, %(scheduled_for)s, %(node_id)s)
ON CONFLICT (cron, scheduled_for) DO NOTHING
RETURNING cron;

-- name: attach_tick_job
UPDATE forge_cron_ticks SET job_id = %(job_id)s
WHERE cron = %(cron)s AND scheduled_for = %(scheduled_for)s;

-- name: last_ticks
SELECT cron, max(scheduled_for) FROM forge_cron_ticks GROUP BY cron;

-- name: delete_old_ticks
DELETE FROM forge_cron_ticks t
WHERE t.fired_at < now() - make_interval(secs => %(retention_secs)s)
  AND t.scheduled_for < (SELECT max(l.scheduled_for) FROM forge_cron_ticks l
                         WHERE l.cron = t.cron);
