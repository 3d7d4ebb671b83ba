"""Live queries: the tables behind them, and the change log of the app's tables.

A query marked `@forge.query(live=["notes"])` reads `notes`. At start, under the migration
lock, `sync_triggers` puts a statement trigger on every table some live query reads (and
takes it off tables no longer declared); it adds a row to `forge_live_changes` with the
table's oid and the writer's transaction id. Every gateway worker that runs live queries reads
the rows committed since its last read (`changes_since`), so a write committed on any node
reaches the gateway workers of every node. Not NOTIFY: PostgreSQL commits the transactions
that NOTIFY one at a time, which cost writers almost half their throughput.

A browser's event stream is a session, held by one gateway worker, which LISTENs on the
session's channel. Subscribing may reach any worker of any node: that worker checks the
request, stores the subscription here and wakes the session's worker through its channel,
which reads the session's subscriptions back (http/livehub.py). Tickets let EventSource,
which cannot send headers, open a stream with a token that never appears in a URL.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from .app import AppRegistry
from .errors import AppLoadError
from .sql import Queries

Q = Queries.load(__file__, "live.sql")
log = logging.getLogger(__name__)

_CREATE_TRIGGER = sql.SQL(
    "CREATE TRIGGER forge_live_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {} "
    "FOR EACH STATEMENT EXECUTE FUNCTION forge_live_change()")
_DROP_TRIGGER = sql.SQL("DROP TRIGGER IF EXISTS forge_live_change ON {}")


def live_tables(registry: AppRegistry) -> dict[str, list[str]]:
    """Each table that live queries read, with the queries that read it."""
    tables: dict[str, list[str]] = {}
    for spec in registry.functions.values():
        for table in spec.live:
            tables.setdefault(table, []).append(spec.name)
    return tables


def sync_triggers(conn: psycopg.Connection, registry: AppRegistry) -> None:
    """Install the change trigger on every declared table and remove it from the others."""
    wanted = {}
    for table, readers in live_tables(registry).items():
        name = conn.execute(Q.resolve_table, {"name": table}).fetchone()[1]
        if name is None:
            raise AppLoadError(f"live query {readers[0]} reads table {table!r}, which does not "
                               "exist (is its migration in migrations/?)")
        wanted[name] = table
    installed = {row[0] for row in conn.execute(Q.list_live_triggers)}
    with conn.transaction():
        for name in sorted(wanted.keys() - installed):
            conn.execute(_CREATE_TRIGGER.format(sql.SQL(name)))
        for name in sorted(installed - wanted.keys()):
            conn.execute(_DROP_TRIGGER.format(sql.SQL(name)))
    if wanted.keys() != installed:
        log.info("live query triggers on %s", ", ".join(sorted(wanted)) or "no table",
                 extra={"event": "live.triggers_synced", "tables": sorted(wanted)})


async def table_oids(conn: psycopg.AsyncConnection, tables: list[str]) -> dict[int, str]:
    """The oid of each declared table that exists, as the change log names it."""
    oids = {}
    for table in tables:
        cursor = await conn.execute(Q.resolve_table, {"name": table})
        oid, _ = await cursor.fetchone()
        if oid is not None:
            oids[int(oid)] = table
    return oids


class Changes(NamedTuple):
    snapshot: str  # to pass as `since` to the next read
    server_started: datetime  # another one: the server restarted and the log was emptied
    tables: list[int]  # the oids of the tables written


async def changes_since(conn: psycopg.AsyncConnection, since: str | None) -> Changes:
    """The tables written by transactions committed after the snapshot `since` (none when
    None: the first read only takes the snapshot)."""
    cursor = await conn.execute(Q.changes_since, {"since": since})
    snapshot, started, tables = await cursor.fetchone()
    return Changes(snapshot, started, tables)


def current_snapshot(conn: psycopg.Connection) -> str:
    return conn.execute(Q.current_snapshot).fetchone()[0]


def prune_changes(conn: psycopg.Connection, before: str) -> int:
    """Delete the changes committed before the snapshot `before`; how many."""
    return conn.execute(Q.prune_changes, {"before": before}).rowcount


# -- tickets ---------------------------------------------------------------------------------

async def create_ticket(conn: psycopg.AsyncConnection, claims: dict[str, Any],
                        ttl_secs: float) -> str:
    ticket = secrets.token_urlsafe(32)
    await conn.execute(Q.create_ticket, {"digest": _digest(ticket), "claims": Jsonb(claims),
                                         "ttl_secs": ttl_secs})
    return ticket


async def use_ticket(conn: psycopg.AsyncConnection, ticket: str) -> dict[str, Any] | None:
    """The claims the ticket was issued for, once: None when unknown, used or expired."""
    cursor = await conn.execute(Q.use_ticket, {"digest": _digest(ticket)})
    row = await cursor.fetchone()
    return None if row is None else row[0]


def _digest(ticket: str) -> bytes:
    return hashlib.sha256(ticket.encode()).digest()


# -- sessions and subscriptions -------------------------------------------------------------

async def open_session(conn: psycopg.AsyncConnection, session_id: str, node_id: UUID,
                       pid: int, channel: str, identity: str | None) -> None:
    await conn.execute(Q.open_session, {"id": session_id, "node_id": node_id, "pid": pid,
                                        "channel": channel, "identity": identity})


async def close_sessions(conn: psycopg.AsyncConnection, session_ids: list[str]) -> None:
    await conn.execute(Q.close_sessions, {"ids": session_ids})


async def sessions_of_node(conn: psycopg.AsyncConnection, node_id: UUID) -> list[tuple]:
    cursor = await conn.execute(Q.list_node_sessions, {"node_id": node_id})
    return await cursor.fetchall()


async def find_session(conn: psycopg.AsyncConnection, session_id: str,
                       subscription_id: str) -> dict | None:
    """The session's id, channel, identity and number of subscriptions other than
    `subscription_id` (which a new one would replace); None when unknown."""
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(Q.find_session, {"id": session_id, "subscription_id": subscription_id})
    return await cursor.fetchone()


async def subscribe(conn: psycopg.AsyncConnection, session: dict, subscription_id: str,
                    claims: dict | None, *, function: str | None = None,
                    args: dict | None = None, job_id: int | None = None) -> None:
    """Store the subscription and wake the session's worker (`session`: find_session's row),
    in one transaction."""
    async with conn.transaction():
        await conn.execute(Q.add_subscription, {
            "session_id": session["id"], "id": subscription_id, "function": function,
            "args": None if args is None else Jsonb(args), "job_id": job_id,
            "claims": None if claims is None else Jsonb(claims)})
        await conn.execute(Q.wake_session, {"channel": session["channel"],
                                            "session_id": session["id"]})


async def unsubscribe(conn: psycopg.AsyncConnection, session: dict,
                      subscription_id: str) -> None:
    async with conn.transaction():
        await conn.execute(Q.remove_subscription, {"session_id": session["id"],
                                                   "id": subscription_id, "created_at": None})
        await conn.execute(Q.wake_session, {"channel": session["channel"],
                                            "session_id": session["id"]})


async def remove_subscription(conn: psycopg.AsyncConnection, session_id: str,
                              subscription_id: str, stored_at: Any) -> None:
    """A subscription that ended on its own (a finished job, an expired token): that row
    only, not one the client stored again under the same id meanwhile."""
    await conn.execute(Q.remove_subscription, {"session_id": session_id, "id": subscription_id,
                                               "created_at": stored_at})


async def subscriptions_of(conn: psycopg.AsyncConnection, session_id: str) -> list[dict]:
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(Q.list_subscriptions, {"session_id": session_id})
    return await cursor.fetchall()
