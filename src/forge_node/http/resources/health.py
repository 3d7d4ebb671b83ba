"""Liveness and readiness.

The same resources serve the gateway's ASGI app (its `on_get_async` responders, routed with
suffix "async") and the monitor's small WSGI server (`on_get`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

import falcon
import psycopg

from ... import __version__, db

log = logging.getLogger(__name__)

READY_TIMEOUT_SECS = 2


class HealthResource:
    """Liveness: the process answers. No database call, so a slow database never fails it."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "healthy", "version": __version__}

    async def on_get_async(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.on_get(req, resp)


class DatabaseProbe:
    """Runs one query on its own connection with a short timeout; reconnects after a failure,
    so readiness recovers by itself when the database comes back."""

    def __init__(self, url: str, purpose: str, query: str = "SELECT 1",
                 params: tuple = ()) -> None:
        self.url = url
        self.purpose = purpose
        self.query = query
        self.params = params
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()

    def fetch(self) -> tuple | None:
        """The query's first row, or None when the database does not answer in time."""
        with self._lock:
            try:
                if self._conn is None or self._conn.closed or self._conn.broken:
                    self._conn = psycopg.connect(
                        self.url, autocommit=True,
                        **{**db.connection_kwargs(self.purpose, READY_TIMEOUT_SECS),
                           "connect_timeout": READY_TIMEOUT_SECS})
                return self._conn.execute(self.query, self.params).fetchone() or ()
            except psycopg.Error as exc:
                log.debug("readiness query failed: %s", db.first_line(exc))
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                return None


class ReadyResource:
    """Readiness: 200 when `is_ready()` says so, else 503; `database` says whether it answered.

    `check` returns (database answered, everything else this node needs is fine).
    """

    def __init__(self, check: Callable[[], tuple[bool, bool]]) -> None:
        self.check = check

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.answer(resp, *self.check())

    async def on_get_async(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The check's query runs on a thread: a slow database never stalls the loop."""
        self.answer(resp, *await asyncio.to_thread(self.check))

    @staticmethod
    def answer(resp: falcon.Response, database: bool, rest: bool) -> None:
        ready = database and rest
        resp.status = falcon.HTTP_200 if ready else falcon.HTTP_503
        resp.media = {"ready": ready, "database": database}
