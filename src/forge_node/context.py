"""What app code receives as `ctx`: in a query or mutation, and in a job."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import psycopg

from . import jobs


class _Enqueues:
    db: psycopg.Connection

    def enqueue(self, name: str, args: dict[str, Any] | None = None, *,
                run_at: datetime.datetime | None = None, delay_secs: float | None = None,
                priority: int | None = None, idempotency_key: str | None = None) -> int:
        """Add a job in ctx.db's transaction (the mutation's, or the job's own): it exists
        only if that transaction commits."""
        return jobs.enqueue(self.db, name, args, run_at=run_at, delay_secs=delay_secs,
                            priority=priority, idempotency_key=idempotency_key)


@dataclass
class FunctionContext(_Enqueues):
    """`ctx` of a query or mutation.

    db: the request's connection: a read-only transaction for a query (on a replica when
        `read_from_replica` is on), one transaction for a mutation, committed when the
        function returns and rolled back when it raises.
    auth: the verified token's claims, or None without a token.
    request_id: the id in the response's x-request-id header and in the logs.
    """

    db: psycopg.Connection
    auth: dict[str, Any] | None
    request_id: str


class JobContext(_Enqueues):
    """`ctx` of a job.

    db: a connection for the handler's own work, taken from the worker's pool on first use;
        one transaction, committed when the handler returns and rolled back when it raises
        (call ctx.db.commit() to commit earlier in a long job).
    scheduled_for: in a cron's run, the tick it belongs to.
    """

    def __init__(self, job: jobs.ClaimedJob, connection: Callable[[], AbstractContextManager],
                 progress: Callable[[int, str | None], None],
                 cancel_requested: Callable[[], bool]) -> None:
        self.job_id = job.id
        self.attempt = job.attempt
        self.args = job.args
        self.scheduled_for: datetime.datetime | None = None  # set for a cron's tick
        self._connection = connection
        self._progress = progress
        self._cancel_requested = cancel_requested
        self._checkout: AbstractContextManager | None = None
        self._db: psycopg.Connection | None = None

    @property
    def db(self) -> psycopg.Connection:
        if self._db is None:
            self._checkout = self._connection()
            self._db = self._checkout.__enter__()
        return self._db

    def progress(self, percent: int, message: str | None = None) -> None:
        """Store how far the job is (0-100) and a word on it; `jobs show` displays both."""
        if not 0 <= percent <= 100:
            raise ValueError(f"progress must be between 0 and 100, got {percent}")
        self._progress(int(percent), message)

    def cancel_requested(self) -> bool:
        """True once `forge-node jobs cancel` asked this job to stop: return soon."""
        return self._cancel_requested()

    def finish(self, exc: BaseException | None) -> None:
        """Commit the handler's work when it returned, roll it back when it raised."""
        if self._checkout is not None:
            checkout, self._checkout, self._db = self._checkout, None, None
            if exc is None:
                checkout.__exit__(None, None, None)
            else:
                checkout.__exit__(type(exc), exc, exc.__traceback__)
