"""What app code receives as `ctx`: in a query or mutation, and in a job."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
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


class _ConnectionOnDemand:
    """ctx.db, taken from a pool on first use (a function or job that never touches it takes
    no connection); `finish()` commits or rolls it back and returns it to the pool."""

    def __init__(self, connection: Callable[[], AbstractContextManager]) -> None:
        self._connection = connection
        self._checkout: AbstractContextManager | None = None
        self._db: psycopg.Connection | None = None

    @property
    def db(self) -> psycopg.Connection:
        if self._db is None:
            checkout = self._connection()
            self._db = checkout.__enter__()
            self._checkout = checkout
        return self._db

    def finish(self, exc: BaseException | None) -> None:
        """Commit the work when the handler returned, roll it back when it raised."""
        if self._checkout is not None:
            checkout, self._checkout, self._db = self._checkout, None, None
            if exc is None:
                checkout.__exit__(None, None, None)
            else:
                checkout.__exit__(type(exc), exc, exc.__traceback__)


class FunctionContext(_ConnectionOnDemand, _Enqueues):
    """`ctx` of a `def` query or mutation.

    db: the request's connection, taken on first use: a read-only transaction for a query
        (on a replica when `read_from_replica` is on), one transaction for a mutation,
        committed when the function returns and rolled back when it raises.
    auth: the verified token's claims, or None without a token.
    request_id: the id in the response's x-request-id header and in the logs.
    """

    def __init__(self, connection: Callable[[], AbstractContextManager],
                 auth: dict[str, Any] | None, request_id: str) -> None:
        super().__init__(connection)
        self.auth = auth
        self.request_id = request_id


class AsyncFunctionContext:
    """`ctx` of an `async def` query or mutation: as FunctionContext, with `await`.

    db: the request's psycopg AsyncConnection, taken by its first statement:
        `await ctx.db.execute(...)`, `async with ctx.db.cursor() as cur`,
        `async with ctx.db.transaction()`; `await ctx.db.connection()` hands over the
        AsyncConnection itself. Same transaction rules as a `def` function's.
    """

    def __init__(self, connection: Callable[[], AbstractAsyncContextManager],
                 auth: dict[str, Any] | None, request_id: str) -> None:
        self.db = AsyncConnectionOnDemand(connection)
        self.auth = auth
        self.request_id = request_id

    async def enqueue(self, name: str, args: dict[str, Any] | None = None, *,
                      run_at: datetime.datetime | None = None, delay_secs: float | None = None,
                      priority: int | None = None, idempotency_key: str | None = None) -> int:
        """Add a job in the mutation's transaction: it exists only if that commits."""
        return await jobs.enqueue_async(await self.db.connection(), name, args, run_at=run_at,
                                        delay_secs=delay_secs, priority=priority,
                                        idempotency_key=idempotency_key)


class AsyncConnectionOnDemand:
    """An AsyncConnection taken from the pool by the first statement that needs it."""

    def __init__(self, connection: Callable[[], AbstractAsyncContextManager]) -> None:
        self._connection = connection
        self._checkout: AbstractAsyncContextManager | None = None
        self._conn: psycopg.AsyncConnection | None = None

    @property
    def taken(self) -> bool:
        """Whether a statement took a connection (that finish() must give back)."""
        return self._checkout is not None

    async def connection(self) -> psycopg.AsyncConnection:
        if self._conn is None:
            checkout = self._connection()
            self._conn = await checkout.__aenter__()
            self._checkout = checkout
        return self._conn

    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        return await (await self.connection()).execute(query, params, **kwargs)

    @contextlib.asynccontextmanager
    async def cursor(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async with (await self.connection()).cursor(*args, **kwargs) as cursor:
            yield cursor

    @contextlib.asynccontextmanager
    async def transaction(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async with (await self.connection()).transaction(*args, **kwargs) as tx:
            yield tx

    async def finish(self, exc: BaseException | None) -> None:
        """Commit when the function returned, roll back when it raised."""
        if self._checkout is not None:
            checkout, self._checkout, self._conn = self._checkout, None, None
            if exc is None:
                await checkout.__aexit__(None, None, None)
            else:
                await checkout.__aexit__(type(exc), exc, exc.__traceback__)


class JobContext(_ConnectionOnDemand, _Enqueues):
    """`ctx` of a job.

    db: a connection for the handler's own work, taken from the worker's pool on first use;
        one transaction, committed when the handler returns and rolled back when it raises
        (call ctx.db.commit() to commit earlier in a long job).
    scheduled_for: in a cron's run, the tick it belongs to.
    """

    def __init__(self, job: jobs.ClaimedJob, connection: Callable[[], AbstractContextManager],
                 progress: Callable[[int, str | None], None],
                 cancel_requested: Callable[[], bool]) -> None:
        super().__init__(connection)
        self.job_id = job.id
        self.attempt = job.attempt
        self.args = job.args
        self.scheduled_for: datetime.datetime | None = None  # set for a cron's tick
        self._progress = progress
        self._cancel_requested = cancel_requested

    def progress(self, percent: int, message: str | None = None) -> None:
        """Store how far the job is (0-100) and a word on it; `jobs show` displays both."""
        if not 0 <= percent <= 100:
            raise ValueError(f"progress must be between 0 and 100, got {percent}")
        self._progress(int(percent), message)

    def cancel_requested(self) -> bool:
        """True once `forge-node jobs cancel` asked this job to stop: return soon."""
        return self._cancel_requested()
