"""Puts the running jobs of dead (or vanished) nodes back to pending, so they run elsewhere.

It runs on every node each heartbeat interval, right behind the reaper that declares nodes
dead; a transaction-scoped advisory lock lets one node at a time do it. The lost attempt
counts: a job whose last attempt was lost this way is dead.
"""

from __future__ import annotations

import logging

import psycopg

from .. import jobs

log = logging.getLogger(__name__)


class ReclaimJobsOfDeadNodes:
    name = "reclaim"

    def __init__(self, interval_secs: float) -> None:
        self.interval_secs = interval_secs

    def run_once(self, conn: psycopg.Connection) -> list[tuple] | None:
        """The (job id, new status, dead node) reclaimed; None when another node is at it."""
        reclaimed = jobs.reclaim_jobs_of_dead_nodes(conn)
        for job_id, status, node_id in reclaimed or ():
            log.warning("job %d was running on dead node %s: now %s", job_id, node_id, status,
                        extra={"event": "job.reclaimed", "job_id": job_id,
                               "dead_node_id": node_id})
        return reclaimed
