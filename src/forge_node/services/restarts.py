"""Writes how many times each role of this node was restarted to its `forge_nodes` row, so
`forge-node status` shows a crash loop. The supervisor runs it at once after a death; the
periodic round only retries a write that the database missed."""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

import psycopg

from .. import cluster


class RestartCounts:
    name = "restarts"

    def __init__(self, node_id: UUID, counts: Callable[[], dict[str, int]],
                 interval_secs: float) -> None:
        self.node_id = node_id
        self.counts = counts
        self.interval_secs = interval_secs
        self.written: dict[str, int] = {}  # a new row has none

    def run_once(self, conn: psycopg.Connection) -> dict[str, int] | None:
        """The counts written; None when the row already had them."""
        counts = self.counts()
        if counts == self.written:
            return None
        cluster.record_restarts(conn, self.node_id, counts)
        self.written = counts
        return counts
