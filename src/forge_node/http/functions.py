"""Running a query or mutation: its connection, its transaction, its timeout.

A query runs in a read-only transaction (on a replica when `read_from_replica` is on), a
mutation in one read-write transaction that commits when the function returns and rolls
back when it raises. `timeout_secs` bounds the database work with a transaction-local
`statement_timeout`; the function itself then runs on a helper thread so the client gets
504 at the deadline: its statement is cancelled, and whatever it does afterwards is rolled
back. (Python cannot stop a thread; a function stuck in pure Python keeps its thread and its
connection until it returns.)
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import logging
import random
import time
from typing import Any

import psycopg
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from psycopg.rows import namedtuple_row
from psycopg_pool import ConnectionPool, PoolTimeout

from .. import db
from ..app import FunctionSpec
from ..context import FunctionContext
from ..errors import Error
from ..observability.otel import Telemetry
from .errors import INTERNAL_ERROR, SERVICE_UNAVAILABLE, TIMEOUT, ApiError

log = logging.getLogger(__name__)

POOL_WAIT_SECS = 5.0


class FunctionRunner:
    def __init__(self, primary: ConnectionPool, replicas: list[ConnectionPool],
                 threads: int, telemetry: Telemetry) -> None:
        self.primary = primary
        self.replicas = replicas
        self.telemetry = telemetry
        self.metrics = telemetry.metrics
        self._timeout_threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="fn-timeout")

    @classmethod
    def for_urls(cls, url: str, replica_urls: tuple[str, ...], *, max_size: int,
                 statement_timeout_secs: float, threads: int, purpose: str,
                 telemetry: Telemetry) -> FunctionRunner:
        def pool(target: str, name: str) -> ConnectionPool:
            return db.create_pool(target, name, max_size=max_size,
                                  statement_timeout_secs=statement_timeout_secs,
                                  configure=_configure_connection)

        replicas = [pool(u, f"{purpose} replica") for u in replica_urls]
        return cls(pool(url, purpose), replicas, threads, telemetry)

    def open(self) -> None:
        for pool in (self.primary, *self.replicas):
            pool.open(wait=False)

    def close(self) -> None:
        self._timeout_threads.shutdown(wait=False, cancel_futures=True)
        for pool in (self.primary, *self.replicas):
            pool.close(timeout=1)

    def run(self, spec: FunctionSpec, args: dict, auth: dict | None, request_id: str) -> Any:
        """Run the function in its `fn.execute` span; record its outcome as a metric."""
        if not self.telemetry.tracing:
            # without traces exported, the request's own ids are all a function's logs need
            return self._counted(spec, args, auth, request_id, None)
        span = self.telemetry.start_span(
            "fn.execute", attributes={"fn.name": spec.name, "fn.kind": spec.kind})
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            return self._counted(spec, args, auth, request_id, span)
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            otel_context.detach(token)
            span.end()

    def _counted(self, spec: FunctionSpec, args: dict, auth: dict | None, request_id: str,
                 span: trace.Span | None) -> Any:
        outcome = "error"
        try:
            result = self._run(spec, args, auth, request_id)
            outcome = "ok"
            return result
        except ApiError as exc:
            outcome = {TIMEOUT: "timeout", SERVICE_UNAVAILABLE: "unavailable"}.get(
                exc.code, "error")
            raise
        finally:
            if span is not None:
                span.set_attribute("fn.outcome", outcome)
            self.metrics.function_run(spec.name, spec.kind, outcome)

    def _run(self, spec: FunctionSpec, args: dict, auth: dict | None, request_id: str) -> Any:
        if spec.timeout_secs is None:
            return self._execute(spec, args, auth, request_id, None, _Holder())
        holder = _Holder()
        deadline = time.monotonic() + spec.timeout_secs
        # the helper thread runs in this request's context: its span, its log fields
        future = self._timeout_threads.submit(contextvars.copy_context().run, self._execute,
                                              spec, args, auth, request_id, deadline, holder)
        try:
            return future.result(timeout=spec.timeout_secs)
        except concurrent.futures.TimeoutError:
            holder.cancel()
            raise _timed_out(spec) from None

    def _execute(self, spec: FunctionSpec, args: dict, auth: dict | None, request_id: str,
                 deadline: float | None, holder: _Holder) -> Any:
        try:
            # The pool's block is the transaction: it commits when the block ends normally
            # and rolls back when it raises (an explicit conn.transaction() costs a round trip)
            with self._pool_for(spec).connection(timeout=POOL_WAIT_SECS) as conn:
                holder.conn = conn
                read_only = spec.kind == "query"
                if conn.read_only != read_only:  # BEGIN READ ONLY, with the first query
                    conn.read_only = read_only
                self._prepare(conn, spec)
                result = spec.handler(FunctionContext(conn, auth, request_id), args)
                if deadline is not None and time.monotonic() > deadline:
                    raise _timed_out(spec)  # too late: roll its work back
                return result
        except psycopg.errors.QueryCanceled:
            raise _timed_out(spec) from None
        except PoolTimeout:
            raise ApiError(503, SERVICE_UNAVAILABLE, "the database is not available") from None
        except psycopg.OperationalError as exc:
            log.warning("function %s lost the database: %s", spec.name, db.first_line(exc),
                        extra={"event": "fn.database_unavailable", "request_id": request_id})
            raise ApiError(503, SERVICE_UNAVAILABLE, "the database is not available") from None
        finally:
            holder.conn = None

    def _pool_for(self, spec: FunctionSpec) -> ConnectionPool:
        if spec.kind == "query" and self.replicas:
            return random.choice(self.replicas)
        return self.primary

    @staticmethod
    def _prepare(conn: psycopg.Connection, spec: FunctionSpec) -> None:
        if spec.timeout_secs is not None:
            conn.execute("SELECT set_config('statement_timeout', %s, true)",
                         [str(int(spec.timeout_secs * 1000))])


class _Holder:
    """The connection a timed function is using, so the waiting thread can cancel its query."""

    conn: psycopg.Connection | None = None

    def cancel(self) -> None:
        conn = self.conn
        if conn is not None:
            try:
                conn.cancel_safe(timeout=1)
            except psycopg.Error:
                pass


def _configure_connection(conn: psycopg.Connection) -> None:
    conn.row_factory = namedtuple_row  # rows answer to row[0] and row.name alike


def _timed_out(spec: FunctionSpec) -> ApiError:
    return ApiError(504, TIMEOUT, f"{spec.name} did not finish within {spec.timeout_secs:g} s")


def error_for_app_error(exc: Error) -> ApiError:
    """A `forge.Error` raised by a function, as the client sees it."""
    status = exc.status if 400 <= exc.status <= 599 else 500
    code = exc.code if isinstance(exc.code, str) and exc.code else INTERNAL_ERROR
    return ApiError(status, code, exc.message)
