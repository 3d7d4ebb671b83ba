"""Deletes the rows of the live queries' change log that every reader has seen.

Each run deletes the changes committed before the snapshot the previous run took, at least
`interval_secs` ago. Gateway workers read the log every `debounce_ms`, and one whose last read
is older than `livehub.STALE_READ_SECS` (well under the interval) re-runs every live query
instead of trusting the log, so no reader can miss a row deleted here. Every node of an app
with live queries runs it; two nodes deleting the same rows only wait on each other.
"""

from __future__ import annotations

import logging

import psycopg

from .. import live

log = logging.getLogger(__name__)

INTERVAL_SECS = 10.0


class LiveChangesPruner:
    name = "live-changes"

    def __init__(self, interval_secs: float = INTERVAL_SECS) -> None:
        self.interval_secs = interval_secs
        self.previous: str | None = None  # the snapshot of the previous run

    def run_once(self, conn: psycopg.Connection) -> int:
        """How many changes were deleted."""
        deleted = 0 if self.previous is None else live.prune_changes(conn, self.previous)
        self.previous = live.current_snapshot(conn)
        log.debug("deleted %d live changes", deleted,
                  extra={"event": "live.changes_pruned", "count": deleted})
        return deleted
