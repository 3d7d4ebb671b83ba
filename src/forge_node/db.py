"""Connections to PostgreSQL, always built in the process that uses them (never across a fork).

Dedicated connections (`Dedicated`) hold session state that must not be shared (advisory
locks, LISTEN) or serve a role's own statements; pools serve request and job work. Neither
hands out a connection that is known dead: one idle for a while, or whose socket has something
to read while it should be silent (PostgreSQL sends a FATAL message and closes the socket of
every session when it restarts, crashes or terminates a backend), is proved with a round trip
first and replaced when that fails, so a restart costs a failed check, not a failed call.
"""

from __future__ import annotations

import logging
import select
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from . import redaction
from .errors import DatabaseUnavailable, UnsupportedDatabase

log = logging.getLogger(__name__)
T = TypeVar("T")

CONNECT_TIMEOUT_SECS = 5
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
               "keepalives_count": 3}


def connection_kwargs(purpose: str, statement_timeout_secs: float | None = None,
                      settings: dict[str, object] | None = None, *,
                      pooled: bool = False) -> dict:
    """libpq settings shared by every connection forge-node opens.

    `purpose` becomes the application_name, so `pg_stat_activity` tells which node and
    role holds a session (and which one holds a lock). `settings` are session settings
    (`SET name = value` at connect). `pooled`: through a transaction-mode pooler
    (`[database] direct_url` set), where no session state survives a transaction: no
    session settings (PgBouncer refuses the `options` startup parameter; the caller bounds
    its statements per transaction, `set_local_timeout`) and no server-side prepared
    statements (psycopg prepares a statement run five times).
    """
    kwargs: dict = {"application_name": f"forge-node {purpose}"[:63],
                    "connect_timeout": CONNECT_TIMEOUT_SECS, **_KEEPALIVES}
    if pooled:
        kwargs["prepare_threshold"] = None
        return kwargs
    session = dict(settings or {})
    if statement_timeout_secs:
        session["statement_timeout"] = int(statement_timeout_secs * 1000)
    if session:
        kwargs["options"] = " ".join(f"-c {name}={value}" for name, value in session.items())
    return kwargs


def connect(url: str, purpose: str, *, statement_timeout_secs: float | None = None,
            autocommit: bool = True,
            settings: dict[str, object] | None = None) -> psycopg.Connection:
    """A dedicated connection; DatabaseUnavailable names the failure without the URL's password."""
    try:
        return psycopg.connect(url, autocommit=autocommit,
                               **connection_kwargs(purpose, statement_timeout_secs, settings))
    except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:  # down, or no URL
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {first_line(exc)}") from exc


MIN_SERVER_VERSION = 150000  # PostgreSQL 15: MERGE, pg_snapshot functions, NULLS NOT DISTINCT


def check_server_version(conn: psycopg.Connection) -> None:
    """Refuse a PostgreSQL older than 15 with a message that says so (exit 78)."""
    version = conn.info.server_version
    if version < MIN_SERVER_VERSION:
        raise UnsupportedDatabase(f"PostgreSQL {version // 10000}.{version % 10000} is too old: "
                          f"forge-node needs PostgreSQL {MIN_SERVER_VERSION // 10000} or newer")


class Dedicated:
    """One connection of a process's own, for one purpose: opened by the first `get()`, and
    again by the first one after it was lost (closed, broken, or found dead before use).
    `on_open(conn)` restores its session state (LISTEN ...); `new_session` tells whether the
    last `get()` opened a new session, whose locks and LISTENs the old one took with it."""

    def __init__(self, url: str, purpose: str, *, statement_timeout_secs: float | None = None,
                 settings: dict[str, object] | None = None,
                 connect_timeout_secs: float | None = None,
                 on_open: Callable[[psycopg.Connection], None] | None = None,
                 pooled: bool = False) -> None:
        self.url = url
        self.purpose = purpose
        self.kwargs = connection_kwargs(purpose, statement_timeout_secs, settings, pooled=pooled)
        if connect_timeout_secs is not None:
            self.kwargs["connect_timeout"] = max(1, round(connect_timeout_secs))
        self.on_open = on_open
        self.new_session = False
        self._conn: psycopg.Connection | None = None

    def get(self) -> psycopg.Connection:
        """The connection, alive as far as can be told; DatabaseUnavailable when it cannot
        be opened."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken and _passes_check(conn):
            self.new_session = False
            return conn
        self.close()
        try:
            conn = psycopg.connect(self.url, autocommit=True, **self.kwargs)
        except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {first_line(exc)}") \
                from exc
        try:
            if self.on_open is not None:
                self.on_open(conn)
        except BaseException:
            conn.close()
            raise
        self._conn, self.new_session = conn, True
        return conn

    @property
    def current(self) -> psycopg.Connection | None:
        """The open connection as it is, unchecked (None when there is none): for reading
        what arrived on it, such as notifications."""
        conn = self._conn
        return None if conn is None or conn.closed else conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class AsyncDedicated:
    """Dedicated for an event loop: the same connection rules, awaited."""

    def __init__(self, url: str, purpose: str, *,
                 on_open: Callable[[psycopg.AsyncConnection], Awaitable[None]] | None = None
                 ) -> None:
        self.url = url
        self.kwargs = connection_kwargs(purpose)
        self.on_open = on_open
        self.new_session = False
        self._conn: psycopg.AsyncConnection | None = None

    async def get(self) -> psycopg.AsyncConnection:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken and not _has_input(conn):
            self.new_session = False
            return conn
        await self.close()
        try:
            conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True,
                                                         **self.kwargs)
        except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {first_line(exc)}") \
                from exc
        try:
            if self.on_open is not None:
                await self.on_open(conn)
        except BaseException:
            await conn.close()
            raise
        self._conn, self.new_session = conn, True
        return conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


class Probe:
    """`read(conn)` on a dedicated connection with a short timeout, for readiness: its
    result, or None when the database does not answer in time. Thread-safe; a failure drops
    the connection, so the next probe reconnects once the database is back."""

    def __init__(self, url: str, purpose: str,
                 read: Callable[[psycopg.Connection], T] = lambda conn: conn.execute(
                     "SELECT 1").fetchone(),
                 timeout_secs: float = 2, pooled: bool = False) -> None:
        self.read = read
        self.timeout_secs = timeout_secs
        self.pooled = pooled
        self._db = Dedicated(url, purpose, statement_timeout_secs=timeout_secs,
                             connect_timeout_secs=timeout_secs, pooled=pooled)
        self._lock = threading.Lock()

    def fetch(self) -> Any:
        with self._lock:
            try:
                conn = self._db.get()
                if not self.pooled:
                    return self.read(conn)
                with conn.transaction():  # the timeout, for this transaction only
                    set_local_timeout(conn, self.timeout_secs)
                    return self.read(conn)
            except (psycopg.Error, DatabaseUnavailable) as exc:
                log.debug("readiness probe failed: %s", first_line(exc))
                self._db.close()
                return None


IDLE_CHECK_SECS = 1.0


SET_LOCAL_TIMEOUT = "SELECT set_config('statement_timeout', %s, true)"


def set_local_timeout(conn: psycopg.Connection, seconds: float) -> None:
    """Bound the statements of the connection's current transaction (0: no bound)."""
    conn.execute(SET_LOCAL_TIMEOUT, [str(int(seconds * 1000))])


def create_pool(url: str, purpose: str, *, max_size: int, min_size: int = 1,
                statement_timeout_secs: float | None = None,
                configure: Callable[[psycopg.Connection], None] | None = None,
                pooled: bool = False) -> ConnectionPool:
    """A pool opened lazily in the calling process; connections idle for a while are checked
    before use."""
    return _StampingPool(
        url,
        min_size=min(min_size, max_size),
        max_size=max_size,
        kwargs=connection_kwargs(purpose, statement_timeout_secs, pooled=pooled),
        check=check_if_idle,
        configure=configure,
        open=False,
        name=purpose,
    )


class _StampingPool(ConnectionPool):
    """Notes when each connection comes back, in the returning thread. (Not a `reset`
    callback: with one, psycopg_pool hands every returned connection to a worker thread.)"""

    def putconn(self, conn: psycopg.Connection) -> None:
        conn._forge_used_at = time.monotonic()
        super().putconn(conn)


def create_async_pool(url: str, purpose: str, *, max_size: int,
                      statement_timeout_secs: float | None = None,
                      configure: Callable[[psycopg.AsyncConnection], Awaitable[None]] | None
                      = None, pooled: bool = False) -> AsyncConnectionPool:
    """create_pool for `async def` code: opened by its first user, inside the event loop,
    with no connection until one is asked for."""
    return _StampingAsyncPool(
        url,
        min_size=0,
        max_size=max_size,
        kwargs=connection_kwargs(purpose, statement_timeout_secs, pooled=pooled),
        check=check_if_idle_async,
        configure=configure,
        open=False,
        name=f"{purpose} async",
    )


class _StampingAsyncPool(AsyncConnectionPool):
    async def putconn(self, conn: psycopg.AsyncConnection) -> None:
        conn._forge_used_at = time.monotonic()
        await super().putconn(conn)


async def check_if_idle_async(conn: psycopg.AsyncConnection) -> None:
    """check_if_idle for an async pool."""
    if _idle(conn) or _has_input(conn):
        await AsyncConnectionPool.check_connection(conn)


def check_if_idle(conn: psycopg.Connection) -> None:
    """Before a checkout, prove with a round trip that a connection still works when it was
    idle for over a second or its socket has something to read (after a PostgreSQL restart,
    each is dead). One returned a moment ago with nothing waiting was alive then: checking it
    too would double the round trips of a busy pool."""
    if _idle(conn) or _has_input(conn):
        ConnectionPool.check_connection(conn)


def _passes_check(conn: psycopg.Connection) -> bool:
    """A dedicated connection is fine unless its socket has input; then a round trip says."""
    if not _has_input(conn):
        return True
    try:
        ConnectionPool.check_connection(conn)
        return True
    except psycopg.Error:
        return False


def _idle(conn: psycopg.Connection | psycopg.AsyncConnection) -> bool:
    """Unused for over IDLE_CHECK_SECS (a pool stamps a connection when it comes back)."""
    return time.monotonic() - getattr(conn, "_forge_used_at", 0.0) > IDLE_CHECK_SECS


def _has_input(conn: psycopg.Connection | psycopg.AsyncConnection) -> bool:
    """Whether the socket of a connection at rest has bytes (or an end) to read: from a
    server that is closing the session. (poll(), not select(): a gateway's sockets are
    numbered past select's 1,024.)"""
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN)
    return bool(poller.poll(0))


class CountingCursor(psycopg.Cursor):
    """Marks its connection once a statement of it succeeds (`statement_ran`), so a failure
    on a connection that ran nothing can be retried on another without running anything
    twice."""

    def execute(self, *args: Any, **kwargs: Any) -> CountingCursor:
        result = super().execute(*args, **kwargs)
        self.connection.statement_ran = True  # type: ignore[attr-defined]
        return result


class AsyncCountingCursor(psycopg.AsyncCursor):
    """CountingCursor for an AsyncConnection."""

    async def execute(self, *args: Any, **kwargs: Any) -> AsyncCountingCursor:
        result = await super().execute(*args, **kwargs)
        self.connection.statement_ran = True  # type: ignore[attr-defined]
        return result


class DiedBeforeAStatement(psycopg.OperationalError):
    """The connection was lost before any statement of this work ran on it: the work may be
    retried on another connection as it is."""


def died_before_a_statement(conn: psycopg.Connection | psycopg.AsyncConnection | None,
                            exc: BaseException) -> bool:
    """Whether `exc`, raised by work on `conn` (a counting cursor's), lost the connection
    before any of the work's statements ran."""
    return (isinstance(exc, psycopg.OperationalError) and conn is not None and conn.broken
            and not getattr(conn, "statement_ran", True))


def first_line(exc: BaseException) -> str:
    """libpq errors span lines; an operator's log wants the first one, without the password
    or query of any URL it quotes."""
    text = redaction.scrub(str(exc).strip())
    return text.splitlines()[0] if text else type(exc).__name__


def redact(url: str) -> str:
    """The URL with its password replaced, fit for a log line."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable database URL>"
    host = info.get("host", "localhost")
    if host.startswith("/"):  # a Unix socket's folder: a URL's host holds it percent-encoded
        host = urllib.parse.quote(host, safe="")
    return f"postgresql://{info.get('user', '')}@{host}:{info.get('port', 5432)}/" \
           f"{info.get('dbname', '')}"
