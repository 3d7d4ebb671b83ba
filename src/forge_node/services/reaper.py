"""Marks nodes dead whose heartbeat is older than `dead_threshold_secs`.

Every supervisor runs it, whatever its roles, so a cluster without a scheduler still notices
dead nodes; a transaction-scoped advisory lock lets one node at a time do the work.
"""

from __future__ import annotations

import logging

import psycopg

from .. import cluster

log = logging.getLogger(__name__)


class DeadNodeReaper:
    name = "reaper"

    def __init__(self, threshold_secs: float, interval_secs: float) -> None:
        self.threshold_secs = threshold_secs
        self.interval_secs = interval_secs

    def run_once(self, conn: psycopg.Connection) -> list[dict] | None:
        """The nodes marked dead by this round; None when another node held the reaper lock."""
        dead = cluster.mark_dead_nodes(conn, self.threshold_secs)
        for node in dead or ():
            log.warning("node %s (%s, pid %s) declared dead: no heartbeat for %.1f s",
                        node["id"], node["hostname"], node["pid"], node["silent_secs"],
                        extra={"event": "node.declared_dead", "dead_node_id": str(node["id"])})
        return dead
