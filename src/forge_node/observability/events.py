"""Every log event forge-node writes, with what it means to an operator.

A log line's `event` field is one of these names, written as a literal string where it is
logged (`extra={"event": "job.timeout"}`), never built from parts: grep for a name and you
find this line and the lines that log it. The role or job that logged a line is in its own
fields (`role`, `child_role`, `job_id`), not in the name. tests/unit/test_events.py checks
that every event logged under src/ is listed here and every one listed is logged.
"""

from __future__ import annotations

EVENTS: dict[str, str] = {
    # the supervisor and the node
    "node.starting": "the supervisor read forge.toml and is starting the node's roles",
    "node.ready": "every role of the node reported ready",
    "node.degraded": "a role of a ready node is down (it is being restarted)",
    "node.draining": "SIGTERM or SIGINT: the roles finish their work, within drain_timeout",
    "node.forced_stop": "a second signal or a failure: the roles are killed at once",
    "node.stopped": "the supervisor exits, with the node's exit code",
    "node.supervisor_failed": "the supervisor itself raised; the node stops",
    "node.sighup_ignored": "SIGHUP changes nothing: restart the node to read forge.toml",
    "node.embedded_database": "no database.url: the embedded PostgreSQL is used (dev only)",
    "node.open_files_limit": "the open files limit was raised, or could not be",
    "node.open_files_too_low": "the open files limit is below what max_connections needs",
    "node.database_lost": "the supervisor's services cannot reach PostgreSQL; retrying",
    "node.database_back": "the supervisor's services reach PostgreSQL again",
    "node.registered_again": "the cluster had declared this node dead; it registered again",
    "node.declared_dead": "this node's reaper declared another node dead (no heartbeat)",
    "node.deregister_failed": "a stopping node could not remove itself from the registry",
    "node.notify_failed": "systemd's notify socket refused a readiness message",
    "config.warning": "forge.toml is valid but has a setting worth a second look",
    "migrations.waiting": "another node holds the migration lock; waiting for it",
    "migrations.applied": "a migration was applied",
    "migrations.reverted": "a migration was reverted",
    # the supervisor about its children (`child_role` names the child)
    "role.started": "the supervisor forked a role process",
    "role.ready": "a role process finished booting and serves",
    "role.stopped": "a role process exited while the node was stopping",
    "role.died": "a role process exited while the node was running; it is restarted",
    "role.config_error": "a role process failed on configuration; the node stops",
    "role.drain_timeout": "a role process did not drain in time and is killed",
    "role.silent": "a role process stopped reporting and is killed",
    # a role process about itself (`role` names it)
    "role.database_lost": "a role's step cannot reach PostgreSQL; retried about once a second",
    "role.database_back": "a role reaches PostgreSQL again",
    "role.step_failed": "a role's step failed with a database error; retried",
    "role.orphaned": "a role process saw its supervisor gone and stops",
    "role.crashed": "a role process raised out of its main loop",
    "listener.lost": "a role's LISTEN connection is down; it polls meanwhile",
    "listener.back": "a role's LISTEN connection is up again",
    "gateway.halted": "a gunicorn worker failed to boot; the gateway stops",
    "monitor.port_unavailable": "a node without a gateway cannot serve its health checks",
    "gateway.connections_shed": "a gateway worker holds max_connections; new calls get 503",
    "telemetry.bad_setting": "an OTEL_BSP_* variable is not a positive integer; default used",
    "telemetry.export_failed": "spans could not be exported (at most once a minute)",
    "telemetry.app_tracer_provider": "the app set its own TracerProvider; forge-node kept it",
    # requests and functions
    "http.request": "the access log: one line per request outside quiet_routes",
    "http.internal_error": "a request raised an unexpected exception (500)",
    "http.unencodable_result": "a function's result could not be encoded as JSON (500)",
    "fn.retried": "a function's connection died before its first statement; run again",
    "fn.database_unavailable": "a function lost the database (503)",
    "fn.read_only": "a query tried to write: make it a mutation (500)",
    "replica.skipped": "a replica is down or lags; queries read elsewhere",
    "replica.back": "a skipped replica is usable again",
    "auth.jwks_fetched": "the signing keys of jwks_url were fetched",
    "auth.jwks_unavailable": "jwks_url could not be fetched; tokens of unknown keys fail",
    "live.triggers_synced": "the live-query change triggers were installed or removed",
    "live.changes_pruned": "old rows of the live change log were deleted",
    "live.listener_lost": "a gateway worker's live-update LISTEN connection is down",
    "live.listener_back": "a gateway worker's live-update LISTEN connection is up again",
    "live.db_failed": "a live session's statement failed",
    "live.query_failed": "a live query's re-run raised",
    "live.slow_client": "a live client stopped reading and was disconnected",
    # jobs, the worker and the scheduler
    "job.timeout": "a job ran past its timeout and was abandoned",
    "job.failed": "a job attempt failed and will be retried",
    "job.dead": "a job attempt failed and no attempts are left",
    "job.fenced": "a job's outcome was discarded: another node had taken it over",
    "job.reclaimed": "a job of a dead node went back to pending (or dead)",
    "job.reclaimed_after_restart": "a job left running by this node's previous worker",
    "job.reclaimed_lost_claim": "a job claimed by a statement whose answer was lost",
    "jobs.cleaned": "finished jobs past retention_secs were deleted",
    "worker.released": "a draining worker gave back jobs it had not finished",
    "worker.release_failed": "a draining worker could not give jobs back",
    "leader.elected": "this node's scheduler became the leader",
    "leader.lost": "the leader's lock session was lost",
    "leader.resigned": "the leader stood down (the node is stopping)",
    "leader.resign_failed": "the leader could not release its lock cleanly",
    "cron.tick": "a cron fired and enqueued its job",
    "cron.missed": "a cron's runs were missed while no leader ran them",
}
