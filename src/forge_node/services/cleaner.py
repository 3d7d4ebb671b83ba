"""Deletes finished jobs (completed, dead, cancelled) older than `[worker] retention_secs`,
in small batches so no run holds locks for long, one node at a time; and fired cron ticks as
old, keeping each cron's latest (the scheduler catches up from it)."""

from __future__ import annotations

import logging

import psycopg

from .. import crons, jobs

log = logging.getLogger(__name__)

BATCH = 1000
MAX_BATCHES_PER_RUN = 20
INTERVAL_SECS = 60.0


class RetentionCleaner:
    name = "cleaner"

    def __init__(self, retention_secs: float, interval_secs: float = INTERVAL_SECS) -> None:
        self.retention_secs = retention_secs
        self.interval_secs = interval_secs

    def run_once(self, conn: psycopg.Connection) -> int | None:
        """How many jobs were deleted; None when another node held the cleaner lock."""
        deleted = jobs.delete_finished_jobs(conn, self.retention_secs, BATCH, MAX_BATCHES_PER_RUN)
        if deleted is not None:
            crons.delete_old_ticks(conn, self.retention_secs)
        if deleted:
            log.info("deleted %d finished jobs older than %g s", deleted, self.retention_secs,
                     extra={"event": "jobs.cleaned", "count": deleted})
        return deleted
