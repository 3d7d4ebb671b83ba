"""Cron schedules: standard 5-field expressions (or 6 with a leading seconds field), the
`@hourly`-style aliases, and a plain `every_secs` interval, each in an IANA time zone.

Next fire times come from cronsim (the cron engine of healthchecks.io, maintained, and
faithful to Debian cron around daylight-saving changes: a 02:30 daily job runs once on the
day the clock skips 02:30 and once on the day it repeats it). `every_secs` ticks fall on
multiples of the interval since the Unix epoch, so every node computes the same ticks.
"""

from __future__ import annotations

import collections
import datetime
import math
from collections.abc import Iterator
from dataclasses import dataclass
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from cronsim import CronSim, CronSimError

from .sql import Queries

Q = Queries.load(__file__, "crons.sql")

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class InvalidSchedule(ValueError):
    pass


@dataclass(frozen=True)
class Schedule:
    expression: str | None
    every_secs: float | None
    zone: ZoneInfo

    @classmethod
    def parse(cls, expression: str | None, every_secs: float | None,
              timezone: str = "UTC") -> Schedule:
        if (expression is None) == (every_secs is None):
            raise InvalidSchedule("give a cron expression or every_secs=, not both or neither")
        try:
            zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidSchedule(f"unknown time zone {timezone!r} (use an IANA name such as "
                                  f"'Europe/Berlin')") from None
        if every_secs is not None:
            if every_secs <= 0:
                raise InvalidSchedule(f"every_secs must be greater than 0, got {every_secs}")
            return cls(None, float(every_secs), zone)
        expanded = ALIASES.get(expression.strip().lower(), expression)
        try:
            CronSim(expanded, datetime.datetime.now(zone))
        except CronSimError as exc:
            raise InvalidSchedule(f"invalid cron expression {expression!r}: {exc}") from None
        return cls(expanded, None, zone)

    def next_after(self, moment: datetime.datetime) -> datetime.datetime:
        """The first tick strictly after `moment` (an aware datetime)."""
        return next(self.ticks_after(moment))

    def ticks_after(self, moment: datetime.datetime) -> Iterator[datetime.datetime]:
        if self.every_secs is not None:
            step = self.every_secs
            n = math.floor(moment.timestamp() / step) + 1
            while True:
                yield datetime.datetime.fromtimestamp(n * step, datetime.UTC)
                n += 1
        yield from (tick for tick in CronSim(self.expression, moment.astimezone(self.zone))
                    if tick > moment)

    def ticks_between(self, after: datetime.datetime, until: datetime.datetime,
                      limit: int) -> list[datetime.datetime]:
        """The last `limit` ticks in (after, until]."""
        found: collections.deque[datetime.datetime] = collections.deque(maxlen=limit)
        for tick in self.ticks_after(after):
            if tick > until:
                break
            found.append(tick)
        return list(found)


def claim_tick(conn: psycopg.Connection, cron: str, scheduled_for: datetime.datetime,
               node_id: UUID) -> bool:
    """Record the tick in the caller's transaction; False when it already fired."""
    row = conn.execute(Q.claim_tick, {"cron": cron, "scheduled_for": scheduled_for,
                                      "node_id": node_id}).fetchone()
    return row is not None


def attach_job(conn: psycopg.Connection, cron: str, scheduled_for: datetime.datetime,
               job_id: int) -> None:
    conn.execute(Q.attach_tick_job, {"cron": cron, "scheduled_for": scheduled_for,
                                     "job_id": job_id})


def last_ticks(conn: psycopg.Connection) -> dict[str, datetime.datetime]:
    """The latest fired tick of every cron."""
    return dict(conn.execute(Q.last_ticks).fetchall())


def delete_old_ticks(conn: psycopg.Connection, retention_secs: float) -> int:
    """Forget ticks older than the retention, keeping each cron's latest (for catch-up)."""
    return conn.execute(Q.delete_old_ticks, {"retention_secs": retention_secs}).rowcount
