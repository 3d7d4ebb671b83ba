"""Running a query or mutation: its connection, its transaction, its timeout.

A query runs in a read-only transaction (on a replica when `read_from_replica` is on), a
mutation in one read-write transaction that commits when the function returns and rolls
back when it raises. The connection is taken from the pool when the function first uses
`ctx.db`: a function that never does takes none.

A `def` function runs on this worker's bounded thread pool (`[gateway] threads`) with the
synchronous pool, so a function that blocks, in the database or in pure Python, never
stalls the event loop. An `async def` function runs on the event loop with an async pool.

`timeout_secs` bounds the database work with a transaction-local `statement_timeout`, and
the client gets 504 at the deadline: the running statement is cancelled on the server, and
whatever the function does afterwards is rolled back. (Python cannot stop a thread: a `def`
function stuck in pure Python keeps its thread, and its connection, until it returns.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any

import psycopg
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from psycopg.rows import namedtuple_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from .. import db
from ..app import FunctionSpec
from ..context import AsyncFunctionContext, FunctionContext
from ..errors import Error
from ..observability.otel import Telemetry
from .errors import INTERNAL_ERROR, READ_ONLY, SERVICE_UNAVAILABLE, TIMEOUT, ApiError
from .replicas import ReplicaHealth

log = logging.getLogger(__name__)

POOL_WAIT_SECS = 5.0


class FunctionRunner:
    def __init__(self, pools: list[ConnectionPool], async_pools: list[AsyncConnectionPool],
                 threads: int, telemetry: Telemetry,
                 replicas: ReplicaHealth | None = None) -> None:
        """`pools` and `async_pools`: the primary first, then the replicas, which `replicas`
        checks."""
        self.pools = pools
        self.async_pools = async_pools
        self.replicas = replicas
        self._watching_replicas: asyncio.Task | None = None
        self.default_timeout_secs: float | None = None  # set per transaction when not None
        self.telemetry = telemetry
        self.metrics = telemetry.metrics
        self.threads = concurrent.futures.ThreadPoolExecutor(max_workers=threads,
                                                             thread_name_prefix="fn")
        self._async_opened = False

    @classmethod
    def for_urls(cls, url: str, replica_urls: tuple[str, ...], *, pool_size: int,
                 statement_timeout_secs: float, threads: int, purpose: str,
                 telemetry: Telemetry, replica_max_lag_secs: float = 10,
                 pooled: bool = False) -> FunctionRunner:
        """The process opens at most `pool_size` connections per database: a `def` function
        holds one of its thread's (up to `threads` of them, leaving one at least), `async def`
        functions and live updates share the rest."""
        targets = [(url, purpose), *((u, f"{purpose} replica") for u in replica_urls)]
        for_threads = max(1, min(threads, pool_size - 1))
        cursor, async_cursor = telemetry.cursor_classes()
        # the primary's URL may go through a transaction-mode pooler (`pooled`); replicas not
        pools = [db.create_pool(target, name, max_size=for_threads,
                                statement_timeout_secs=statement_timeout_secs,
                                configure=functools.partial(_configure_connection, cursor=cursor),
                                pooled=pooled and i == 0)
                 for i, (target, name) in enumerate(targets)]
        async_pools = [db.create_async_pool(target, name, max_size=max(1, pool_size - for_threads),
                                            statement_timeout_secs=statement_timeout_secs,
                                            configure=functools.partial(
                                                _configure_async_connection, cursor=async_cursor),
                                            pooled=pooled and i == 0)
                       for i, (target, name) in enumerate(targets)]
        replicas = ReplicaHealth(replica_urls, replica_max_lag_secs, purpose) \
            if replica_urls else None
        runner = cls(pools, async_pools, threads, telemetry, replicas)
        if pooled:  # no session settings through a pooler: the timeout goes per transaction
            runner.default_timeout_secs = statement_timeout_secs
        return runner

    def open(self) -> None:
        """Open the synchronous pools; the async ones open inside the event loop, on first use."""
        for pool in self.pools:
            pool.open(wait=False)

    def close(self) -> None:
        self.threads.shutdown(wait=False, cancel_futures=True)
        for pool in self.pools:
            pool.close(timeout=1)

    async def aclose(self) -> None:
        """close(), and the async pools, from inside the loop that opened them."""
        self.close()
        if self._async_opened:
            for pool in self.async_pools:
                await pool.close(timeout=1)

    def run(self, spec: FunctionSpec, args: dict, auth: dict | None,
            request_id: str) -> Awaitable[Any]:
        """Run the function in its `fn.execute` span; record its outcome as a metric."""
        if self.replicas is not None and self._watching_replicas is None:
            self._watching_replicas = asyncio.ensure_future(self.replicas.watch())
        if not self.telemetry.tracing:
            # without traces exported, the request's own ids are all a function's logs need
            # (and the call is one coroutine less: this runs on every call)
            return self._counted(spec, args, auth, request_id, None)
        return self._traced(spec, args, auth, request_id)

    async def _traced(self, spec: FunctionSpec, args: dict, auth: dict | None,
                      request_id: str) -> Any:
        span = self.telemetry.start_span(
            "fn.execute", attributes={"fn.name": spec.name, "fn.kind": spec.kind})
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            return await self._counted(spec, args, auth, request_id, span)
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            otel_context.detach(token)
            span.end()

    async def _counted(self, spec: FunctionSpec, args: dict, auth: dict | None,
                       request_id: str, span: trace.Span | None) -> Any:
        """The function's result; a cancelled statement is its timeout, a database that cannot
        be reached is 503. (One frame for all of it: this runs on every call.)"""
        outcome = "error"
        try:
            run = self._run_async if spec.is_async else self._run_in_thread
            try:
                result = await run(spec, args, auth, request_id)
            except db.DiedBeforeAStatement as exc:  # nothing ran: run it again, once
                log.info("function %s lost its connection before its first statement: %s; "
                         "running it again on another", spec.name, db.first_line(exc),
                         extra={"event": "fn.retried", "request_id": request_id})
                result = await run(spec, args, auth, request_id)
            outcome = "ok"
            return result
        except ApiError as exc:
            outcome = {TIMEOUT: "timeout", SERVICE_UNAVAILABLE: "unavailable"}.get(
                exc.code, "error")
            raise
        except psycopg.errors.QueryCanceled:
            outcome = "timeout"
            raise _timed_out(spec) from None
        except psycopg.errors.ReadOnlySqlTransaction as exc:
            raise _wrote_in_a_query(spec, exc, request_id) from None
        except PoolTimeout:
            outcome = "unavailable"
            raise _unavailable() from None
        except psycopg.OperationalError as exc:
            outcome = "unavailable"
            log.warning("function %s lost the database: %s", spec.name, db.first_line(exc),
                        extra={"event": "fn.database_unavailable", "request_id": request_id})
            raise _unavailable() from None
        finally:
            if span is not None:
                span.set_attribute("fn.outcome", outcome)
            self.metrics.function_run(spec.name, spec.kind, outcome)

    # -- def functions: on the thread pool ---------------------------------------------------

    async def _run_in_thread(self, spec: FunctionSpec, args: dict, auth: dict | None,
                             request_id: str) -> Any:
        statement = _Statement()
        deadline = None if spec.timeout_secs is None else time.monotonic() + spec.timeout_secs
        ctx = FunctionContext(functools.partial(self._checkout, spec, statement), auth,
                              request_id)
        # the thread runs in this request's context: its span, its log fields
        call = functools.partial(contextvars.copy_context().run, _call, spec, ctx, args,
                                 deadline)
        future = asyncio.get_running_loop().run_in_executor(self.threads, call)
        if deadline is None:
            return await future
        done, _ = await asyncio.wait({future}, timeout=spec.timeout_secs)
        if done:
            return future.result()
        future.add_done_callback(_forget)  # its late outcome is rolled back and thrown away
        await asyncio.to_thread(statement.cancel)
        raise _timed_out(spec)

    @contextlib.contextmanager
    def _checkout(self, spec: FunctionSpec, statement: _Statement) -> Iterator[psycopg.Connection]:
        # The pool's block is the transaction: it commits when the block ends normally and
        # rolls back when it raises (an explicit conn.transaction() costs a round trip)
        conn = None
        try:
            with self._pick(self.pools, spec).connection(timeout=POOL_WAIT_SECS) as conn:
                statement.conn = conn
                try:
                    read_only = spec.kind == "query"
                    if conn.read_only != read_only:  # BEGIN READ ONLY, with the first query
                        conn.read_only = read_only
                    conn.statement_ran = False
                    timeout_ms = self._timeout_ms(spec)
                    if timeout_ms is not None:
                        conn.execute(db.SET_LOCAL_TIMEOUT, [timeout_ms])
                        conn.statement_ran = False  # forge-node's own statement
                    yield conn
                finally:
                    statement.conn = None
        except psycopg.OperationalError as exc:
            if db.died_before_a_statement(conn, exc):
                raise db.DiedBeforeAStatement(str(exc)) from exc
            raise

    # -- async def functions: on the event loop ---------------------------------------------

    async def _run_async(self, spec: FunctionSpec, args: dict, auth: dict | None,
                         request_id: str) -> Any:
        ctx = AsyncFunctionContext(functools.partial(self._checkout_async, spec), auth,
                                   request_id)
        try:
            if spec.timeout_secs is None:
                result = await spec.handler(ctx, args)
            else:
                try:
                    result = await asyncio.wait_for(spec.handler(ctx, args), spec.timeout_secs)
                except TimeoutError:
                    raise _timed_out(spec) from None
        except BaseException as exc:
            if ctx.db.taken:
                await ctx.db.finish(exc)
            raise
        if ctx.db.taken:
            await ctx.db.finish(None)
        return result

    @contextlib.asynccontextmanager
    async def primary_connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A read-write connection of the primary's async pool, for the gateway's own
        statements (live sessions), in one transaction; 503 when the database is away."""
        await self._open_async_pools()
        try:
            async with self.async_pools[0].connection(timeout=POOL_WAIT_SECS) as conn:
                if conn.read_only:
                    await conn.set_read_only(False)
                yield conn
        except (PoolTimeout, psycopg.OperationalError):
            raise _unavailable() from None

    def _timeout_ms(self, spec: FunctionSpec) -> str | None:
        """The bound of the call's transaction when it needs one of its own: the function's
        timeout_secs, or behind a pooler the default (no session settings there)."""
        seconds = spec.timeout_secs if spec.timeout_secs is not None \
            else self.default_timeout_secs
        return None if seconds is None else str(int(seconds * 1000))

    def _pick(self, pools: list, spec: FunctionSpec) -> Any:
        """The primary, or for a query a replica that its last check found usable."""
        if spec.kind == "query" and self.replicas is not None:
            usable = [pool for pool, ok in zip(pools[1:], self.replicas.usable, strict=True)
                      if ok]
            if usable:
                return random.choice(usable)
        return pools[0]

    async def _open_async_pools(self) -> None:
        if not self._async_opened:
            self._async_opened = True
            for pool in self.async_pools:
                await pool.open(wait=False)

    @contextlib.asynccontextmanager
    async def _checkout_async(self, spec: FunctionSpec) -> AsyncIterator[psycopg.AsyncConnection]:
        await self._open_async_pools()
        conn = None
        try:
            pool = self._pick(self.async_pools, spec)
            async with pool.connection(timeout=POOL_WAIT_SECS) as conn:
                read_only = spec.kind == "query"
                if conn.read_only != read_only:
                    await conn.set_read_only(read_only)
                conn.statement_ran = False
                timeout_ms = self._timeout_ms(spec)
                if timeout_ms is not None:
                    await conn.execute(db.SET_LOCAL_TIMEOUT, [timeout_ms])
                    conn.statement_ran = False  # forge-node's own statement
                yield conn
        except psycopg.OperationalError as exc:
            if db.died_before_a_statement(conn, exc):
                raise db.DiedBeforeAStatement(str(exc)) from exc
            raise


def _call(spec: FunctionSpec, ctx: FunctionContext, args: dict, deadline: float | None) -> Any:
    """A `def` function in its thread; its transaction ends with it."""
    try:
        result = spec.handler(ctx, args)
        if deadline is not None and time.monotonic() > deadline:
            raise _timed_out(spec)  # too late: roll its work back
    except BaseException as exc:
        ctx.finish(exc)
        raise
    ctx.finish(None)
    return result


class _Statement:
    """The connection a timed `def` function is using, so the loop can cancel its query."""

    conn: psycopg.Connection | None = None

    def cancel(self) -> None:
        conn = self.conn
        if conn is not None:
            try:
                conn.cancel_safe(timeout=1)
            except psycopg.Error:
                pass


def _forget(future: asyncio.Future) -> None:
    """Read a timed-out call's late outcome, so asyncio does not log it as unretrieved."""
    if not future.cancelled():
        future.exception()


def _configure_connection(conn: psycopg.Connection, cursor: type[db.CountingCursor]) -> None:
    conn.row_factory = namedtuple_row  # rows answer to row[0] and row.name alike
    conn.cursor_factory = cursor


async def _configure_async_connection(conn: psycopg.AsyncConnection,
                                      cursor: type[db.AsyncCountingCursor]) -> None:
    conn.row_factory = namedtuple_row
    conn.cursor_factory = cursor


def _unavailable() -> ApiError:
    return ApiError(503, SERVICE_UNAVAILABLE, "the database is not available")


def _timed_out(spec: FunctionSpec) -> ApiError:
    return ApiError(504, TIMEOUT, f"{spec.name} did not finish within {spec.timeout_secs:g} s")


def _wrote_in_a_query(spec: FunctionSpec, exc: psycopg.Error, request_id: str) -> ApiError:
    """A query ran a write: a bug of the app, not of the call (so 500), but one with a name,
    since its fix is always the same (make it a mutation)."""
    log.error("query %s tried to write: %s", spec.name, db.first_line(exc),
              extra={"event": "fn.read_only", "request_id": request_id})
    return ApiError(500, READ_ONLY, f"{spec.name} is a query, and queries run in a read-only "
                    f"transaction ({db.first_line(exc)}); make it a mutation to write")


def error_for_app_error(exc: Error) -> ApiError:
    """A `forge.Error` raised by a function, as the client sees it."""
    status = exc.status if 400 <= exc.status <= 599 else 500
    code = exc.code if isinstance(exc.code, str) and exc.code else INTERNAL_ERROR
    return ApiError(status, code, exc.message)
