"""Keeps this node's row in `forge_nodes` fresh, and registers it again after it was declared
dead (a node cut off from the database longer than the threshold comes back this way)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import psycopg

from .. import cluster
from ..cluster import NodeIdentity

log = logging.getLogger(__name__)


class Heartbeat:
    name = "heartbeat"

    def __init__(self, node: NodeIdentity, status: Callable[[], str], interval_secs: float) -> None:
        self.node = node
        self.status = status
        self.interval_secs = interval_secs
        self.registered = False
        self.last_latency_ms: float | None = None

    def run_once(self, conn: psycopg.Connection) -> str:
        """Return "registered", "heartbeat" or "registered again"."""
        status = self.status()
        if not self.registered:
            cluster.register_node(conn, self.node, status)
            self.registered = True
            return "registered"
        started = time.perf_counter()
        alive = cluster.heartbeat_node(conn, self.node.id, status, self.last_latency_ms)
        self.last_latency_ms = round((time.perf_counter() - started) * 1000, 3)
        if alive:
            return "heartbeat"
        log.warning("the cluster declared this node dead (its heartbeats stopped reaching the "
                    "database); registering it again", extra={"event": "node.registered_again"})
        cluster.register_node(conn, self.node, status)
        return "registered again"
