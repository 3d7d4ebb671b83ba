"""LISTEN on a dedicated connection, reconnecting when the server goes away.

`conn.notifies()` raises when PostgreSQL restarts; the listener then drops the connection,
and the next `poll()` connects and LISTENs again, at most once every RETRY_SECS. Its caller
treats every reconnect as "something may have been missed" and polls the queue once.

It logs to the logger of the role that uses it (the worker's, the scheduler's), so an
operator reading `listener.lost` sees which role went deaf.
"""

from __future__ import annotations

import logging
import time

import psycopg

from . import db
from .errors import DatabaseUnavailable

RETRY_SECS = 1.0


class Listener:
    def __init__(self, url: str, channels: tuple[str, ...], purpose: str,
                 log: logging.Logger) -> None:
        self.channels = channels
        self.log = log
        self._db = db.Dedicated(url, purpose, on_open=self._listen)
        self._lost = False
        self._retry_at = 0.0

    def fds(self) -> list[int]:
        """The socket to select() on; none while disconnected."""
        conn = self._db.current
        return [conn.pgconn.socket] if conn is not None else []

    def poll(self) -> list[psycopg.Notify] | None:
        """Notifications received so far; None after a (re)connect: the caller should poll."""
        conn = self._db.current
        if conn is None:
            return [] if time.monotonic() < self._retry_at else self._connect()
        try:
            return list(conn.notifies(timeout=0))
        except psycopg.Error as exc:
            self._drop(exc)
            return None

    def _listen(self, conn: psycopg.Connection) -> None:
        for channel in self.channels:
            conn.execute(f"LISTEN {channel}")

    def _connect(self) -> None:
        self._retry_at = time.monotonic() + RETRY_SECS
        try:
            self._db.get()
        except (DatabaseUnavailable, psycopg.Error) as exc:
            if not self._lost:
                self.log.warning("cannot listen for wake-ups: %s; polling meanwhile",
                            db.first_line(exc), extra={"event": "listener.lost"})
            self._lost = True
            return None
        if self._lost:
            self.log.info("listening for wake-ups again", extra={"event": "listener.back"})
        self._lost = False
        return None

    def _drop(self, exc: Exception) -> None:
        self.log.warning("lost the wake-up connection: %s", db.first_line(exc),
                         extra={"event": "listener.lost"})
        self._lost = True
        self.close()

    def close(self) -> None:
        self._db.close()
