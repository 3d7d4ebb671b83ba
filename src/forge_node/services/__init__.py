"""Periodic duties of the supervisor: each a small service with a `run_once(conn)`.

The runner schedules them on one dedicated connection in the supervisor's own thread (the
supervisor stays single-threaded). A failing database never crashes the supervisor: the
runner logs the outage once, drops the connection and tries again on the next round.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

import psycopg

from .. import db
from ..errors import DatabaseUnavailable

log = logging.getLogger(__name__)


class Service(Protocol):
    name: str
    interval_secs: float

    def run_once(self, conn: psycopg.Connection) -> Any: ...


class ServiceRunner:
    def __init__(self, connection: db.Dedicated, services: list[Service],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._db = connection
        self.services = services
        self.clock = clock
        self._due = {service.name: clock() for service in services}
        self._outage = False

    def run_due(self) -> None:
        for service in self.services:
            if self.clock() >= self._due[service.name]:
                self.run(service)

    def run(self, service: Service) -> Any:
        """Run one service now and schedule its next round (+-10% so nodes spread out)."""
        self._due[service.name] = self.clock() + service.interval_secs * random.uniform(0.9, 1.1)
        try:
            result = service.run_once(self._db.get())
        except (psycopg.Error, DatabaseUnavailable) as exc:
            self._lost(exc)
            return None
        if self._outage:
            self._outage = False
            log.info("the database is reachable again", extra={"event": "node.database_back"})
        return result

    def run_now(self, name: str) -> Any:
        return self.run(next(s for s in self.services if s.name == name))

    def seconds_until_due(self) -> float:
        return max(0.0, min(self._due.values(), default=60.0) - self.clock())

    def disconnect(self) -> None:
        """Close the connection; the supervisor calls this before every fork."""
        self._db.close()

    def _lost(self, exc: Exception) -> None:
        self.disconnect()
        if not self._outage:
            self._outage = True
            log.warning("cannot reach the database: %s; retrying", db.first_line(exc),
                        extra={"event": "node.database_lost"})
