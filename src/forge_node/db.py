"""Connections to PostgreSQL, always built in the process that uses them (never across a fork).

Dedicated connections hold session state that must not be shared (advisory locks, LISTEN);
pools serve request and job work and check a connection before handing it out, so a
PostgreSQL restart costs one failed check instead of one failed request.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from .errors import DatabaseUnavailable

CONNECT_TIMEOUT_SECS = 5
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
               "keepalives_count": 3}


def connection_kwargs(purpose: str, statement_timeout_secs: float | None = None,
                      settings: dict[str, object] | None = None) -> dict:
    """libpq settings shared by every connection forge-node opens.

    `purpose` becomes the application_name, so `pg_stat_activity` tells which node and
    role holds a session (and which one holds a lock). `settings` are session settings
    (`SET name = value` at connect).
    """
    kwargs: dict = {"application_name": f"forge-node {purpose}"[:63],
                    "connect_timeout": CONNECT_TIMEOUT_SECS, **_KEEPALIVES}
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
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {first_line(exc)}") from exc


IDLE_CHECK_SECS = 1.0


def create_pool(url: str, purpose: str, *, max_size: int, min_size: int = 1,
                statement_timeout_secs: float | None = None,
                configure: Callable[[psycopg.Connection], None] | None = None) -> ConnectionPool:
    """A pool opened lazily in the calling process; connections idle for a while are checked
    before use."""
    return _StampingPool(
        url,
        min_size=min(min_size, max_size),
        max_size=max_size,
        kwargs=connection_kwargs(purpose, statement_timeout_secs),
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
                      = None) -> AsyncConnectionPool:
    """create_pool for `async def` code: opened by its first user, inside the event loop,
    with no connection until one is asked for."""
    return _StampingAsyncPool(
        url,
        min_size=0,
        max_size=max_size,
        kwargs=connection_kwargs(purpose, statement_timeout_secs),
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
    if _idle(conn):
        await AsyncConnectionPool.check_connection(conn)


def check_if_idle(conn: psycopg.Connection) -> None:
    """Before a checkout, prove with a round trip that a connection idle for over a second
    still works (after a PostgreSQL restart, every idle one is dead). One returned a moment
    ago was alive then (a broken one is not taken back): checking it too would double the
    round trips of a busy pool."""
    if _idle(conn):
        ConnectionPool.check_connection(conn)


def _idle(conn: psycopg.Connection | psycopg.AsyncConnection) -> bool:
    """Unused for over IDLE_CHECK_SECS (a pool stamps a connection when it comes back)."""
    return time.monotonic() - getattr(conn, "_forge_used_at", 0.0) > IDLE_CHECK_SECS


def first_line(exc: BaseException) -> str:
    """libpq errors span lines; an operator's log wants the first one."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def redact(url: str) -> str:
    """The URL with its password replaced, fit for a log line."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable database URL>"
    host = info.get("host", "localhost")
    return f"postgresql://{info.get('user', '')}@{host}:{info.get('port', 5432)}/" \
           f"{info.get('dbname', '')}"
