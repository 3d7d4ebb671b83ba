"""One gateway worker's live sessions, and the shared re-runs of their queries.

    browser --GET /_api/events--> Session: a bounded queue of events, streamed as SSE
    any worker --POST /_api/subscribe--> forge_live_subscriptions + NOTIFY <session's channel>
    this worker's listener <-- NOTIFY <channel> (a session id): reload that session's rows
    this worker's poller   <-- forge_live_changes, every `debounce_ms`: the tables written
                               since its last read; the groups reading them re-run
    Group: one (function, args, identity). It runs once per change, however many sessions
           watch it, and pushes its result only when it differs from the last one sent.

Changes are debounced by the poller's period: writes committed between two reads share one
run. A group that changes while it runs runs again after. The poller runs only while some
group exists; its first read takes a snapshot and re-runs every group, and so does any read
after a failed or late one or a server restart (which empties the log), so no change falls
between two reads. A session whose queue holds `send_queue` events is a client that stopped
reading: it is disconnected, so it never slows the others or grows memory. The listener's
connection is opened by the first stream and kept; after it reconnects, every session
reloads, since wake-ups sent meanwhile are lost.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from falcon.asgi import SSEvent

from .. import db, jobs, linux, live
from ..app import AppRegistry, FunctionSpec
from ..config import SubscriptionsConfig
from ..encoding import dumps, to_jsonable
from ..errors import DatabaseUnavailable, Error
from .correlation import new_request_id
from .errors import (
    INTERNAL_ERROR,
    NOT_FOUND,
    SERVICE_UNAVAILABLE,
    TOO_MANY_SUBSCRIPTIONS,
    UNAUTHORIZED,
    ApiError,
)
from .functions import FunctionRunner, error_for_app_error

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_SECS = 1.0
LISTEN_WAIT_SECS = 5.0
EXPIRY_CHECK_SECS = 1.0
STALE_READ_SECS = 5.0  # a change log read further apart may miss pruned rows (livechanges.py)
TERMINAL_JOB_STATES = frozenset({"completed", "dead", "cancelled"})
TIME_CLAIMS = ("exp", "iat", "nbf", "jti")  # two tokens of one identity differ only in these


def identity_of(claims: dict | None) -> str:
    """What a query's result may depend on besides its args: the claims, less their times."""
    if claims is None:
        return ""
    return _canonical({k: v for k, v in claims.items() if k not in TIME_CLAIMS})


class Session:
    """One event stream: what it watches and the events it has yet to send."""

    def __init__(self, session_id: str, claims: dict | None, limit: int) -> None:
        self.id = session_id
        self.claims = claims
        self.limit = limit
        self.events: collections.deque[SSEvent] = collections.deque()
        self.wakeup = asyncio.Event()
        self.watching: dict[str, Watch] = {}
        self.closed = False
        self.seq = 0
        self.quiet = True  # nothing queued since the last keep-alive
        self.connection: Any = None  # the HTTP connection, to cut a client that stopped reading

    def push(self, event: str, data: str) -> bool:
        """Queue an event (its JSON text); False when the client has `limit` events unread."""
        if self.closed:
            return True
        if len(self.events) >= self.limit:
            return False
        self.append(event, data)
        self.quiet = False
        return True

    def append(self, event: str, data: str) -> None:
        self.seq += 1
        self.events.append(SSEvent(event=event, text=data, event_id=f"{self.id}:{self.seq}"))
        self.wakeup.set()

    def keep_alive(self) -> bool:
        """Queue a comment line if nothing else went since the last one; False when the
        client has `limit` events unread (a dead client is found this way too)."""
        if not self.quiet:
            self.quiet = True
            return True
        if len(self.events) >= self.limit:
            return False
        self.events.append(None)  # falcon sends None as an SSE comment
        self.wakeup.set()
        return True

    def end(self, event: str | None = None) -> None:
        """Stop the stream after what is queued (and `event`, past the limit if need be)."""
        if event is not None and not self.closed:
            self.append(event, "{}")
        self.closed = True
        self.wakeup.set()

    async def stream(self) -> AsyncIterator[SSEvent | None]:
        """The SSE body: queued events as they come (None: a keep-alive comment line, queued
        by the hub's one timer rather than a timeout per wait, which each event would pay)."""
        while True:
            if not self.events:
                if self.closed:
                    return
                self.wakeup.clear()
                await self.wakeup.wait()
            while self.events:
                yield self.events.popleft()


@dataclass(eq=False)
class Watch:
    """A session's subscription: to a group's query, or to a job."""

    id: str
    session: Session
    expires_at: float | None
    group: Group | None = None
    job_id: int | None = None
    row: tuple = ()  # the stored subscription, to tell a changed one from the same
    stored_at: Any = None  # its row's created_at: a later one of the same id is another


@dataclass(eq=False)
class Group:
    """Every watch of one query with the same args and identity: one run serves them all."""

    key: tuple
    spec: FunctionSpec
    args: dict
    claims: dict | None
    watches: set[Watch] = field(default_factory=set)
    last: str | None = None  # the payload last sent: a result or an error
    running: bool = False
    dirty: bool = False


class LiveHub:
    def __init__(self, settings: SubscriptionsConfig, registry: AppRegistry,
                 runner: FunctionRunner, node_id: UUID, database_url: str,
                 workers: int) -> None:
        self.settings = settings
        self.registry = registry
        self.runner = runner
        self.node_id = node_id
        self.database_url = database_url
        self.capacity = max(1, settings.max_per_node // max(1, workers))
        self.channel = f"forge_live_{node_id.hex[:16]}_{os.getpid()}"
        self.sessions: dict[str, Session] = {}
        self.groups: dict[tuple, Group] = {}
        self.readers: dict[str, set[Group]] = {}  # table -> the groups that read it
        self.tables: dict[int, str] = {}  # oid -> table, as notifications name them
        self.watch_count = 0
        self.jobs: dict[int, set[Watch]] = {}
        self.job_states: dict[int, dict] = {}
        self.listening = asyncio.Event()
        self.tasks: set[asyncio.Task] = set()
        self.listener: asyncio.Task | None = None
        self.poller: asyncio.Task | None = None
        self.housekeeper: asyncio.Task | None = None
        self.shut = False

    # -- sessions ----------------------------------------------------------------------------

    async def open(self, claims: dict | None) -> Session:
        """A new session, registered and listened for; 503 while draining or without the
        database."""
        if self.shut:
            raise ApiError(503, SERVICE_UNAVAILABLE, "this node is shutting down; connect to "
                                                     "another")
        if self.listener is None:  # not in this request's context: its ids are not the hub's
            self.listener = asyncio.create_task(self.listen(), context=contextvars.Context())
        try:
            async with asyncio.timeout(LISTEN_WAIT_SECS):
                await self.listening.wait()
        except TimeoutError:
            raise ApiError(503, SERVICE_UNAVAILABLE, "live updates cannot reach the database; "
                                                     "try again") from None
        session = Session(secrets.token_urlsafe(16), claims, self.settings.send_queue)
        async with self.runner.primary_connection() as conn:
            await live.open_session(conn, session.id, self.node_id, os.getpid(), self.channel,
                                    None if claims is None else _subject(claims))
        self.sessions[session.id] = session
        if self.housekeeper is None or self.housekeeper.done():
            self.housekeeper = asyncio.create_task(self.keep_house(),
                                                   context=contextvars.Context())
        session.push("connected", dumps({"session_id": session.id}))
        return session

    def close(self, session: Session) -> None:
        """The stream ended: forget the session here and in the database."""
        if self.sessions.pop(session.id, None) is None:
            return
        session.end()
        for watch in list(session.watching.values()):
            self.drop(watch)
        self.spawn(self.forget_sessions([session.id]))

    async def forget_sessions(self, session_ids: list[str]) -> None:
        # the node's end removes them all the same
        await self.best_effort(lambda conn: live.close_sessions(conn, session_ids),
                               "remove live sessions")

    async def best_effort(self, work: Callable[[Any], Awaitable[T]], what: str,
                          level: int = logging.DEBUG) -> T | None:
        """`work(conn)` on a primary connection; None (and a log line) when the database
        fails it, for work that a later turn or the node's end makes up for."""
        try:
            async with self.runner.primary_connection() as conn:
                return await work(conn)
        except (psycopg.Error, ApiError) as exc:
            log.log(level, "could not %s: %s", what, exc, extra={"event": "live.db_failed"})
            return None

    def shutdown(self) -> None:
        """Drain: every stream ends with `event: shutdown`, so its client reconnects elsewhere."""
        self.shut = True
        for session in list(self.sessions.values()):
            session.end("shutdown")
        for task in (self.listener, self.poller, self.housekeeper):
            if task is not None:
                task.cancel()

    def disconnect(self, session: Session) -> None:
        """A client that stopped reading: cut its connection, whatever it has unread."""
        log.warning("live session %s disconnected: its client stopped reading (%d events "
                    "waiting)", session.id, len(session.events),
                    extra={"event": "live.slow_client"})
        session.events.clear()
        connection = session.connection
        if connection is not None and connection.transport is not None:
            connection.transport.abort()
        self.close(session)

    def send(self, watch: Watch, event: str, payload: dict | str) -> None:
        """Queue an event for the watch's session; `payload` as an object, or as the JSON text
        of one without the watch's id (a shared result: encoded once for all its watches)."""
        if isinstance(payload, dict):
            data = dumps({"id": watch.id, **payload})
        else:
            data = f'{{"id":{json.dumps(watch.id)},{payload[1:]}'
        if not watch.session.push(event, data):
            self.disconnect(watch.session)

    # -- the listener --------------------------------------------------------------------------

    async def listen(self) -> None:
        """LISTEN for wake-ups; reconnect (and catch up) whenever the link drops."""
        link = db.AsyncDedicated(self.database_url, f"gateway {os.getpid()} live",
                                 on_open=self.on_listener_open)
        lost, first = False, True
        while not self.shut:
            try:
                conn = await link.get()
                if first:
                    first = False
                    await self.best_effort(self.forget_dead_workers_sessions,
                                           "forget dead workers' live sessions")
                if lost:
                    log.info("live updates listening again",
                             extra={"event": "live.listener_back"})
                    self.catch_up()
                lost = False
                self.listening.set()
                async for notify in conn.notifies():
                    if notify.payload in self.sessions:
                        self.spawn(self.reload(self.sessions[notify.payload]))
            except (psycopg.Error, DatabaseUnavailable) as exc:
                self.listening.clear()
                await link.close()
                if not lost:
                    log.warning("live updates lost the database: %s", db.first_line(exc),
                                extra={"event": "live.listener_lost"})
                lost = True
                await asyncio.sleep(RETRY_SECS)
        await link.close()

    async def on_listener_open(self, conn: psycopg.AsyncConnection) -> None:
        await conn.execute(f"LISTEN {self.channel}")
        self.tables = await live.table_oids(conn, list(live.live_tables(self.registry)))

    async def forget_dead_workers_sessions(self, conn: Any) -> None:
        """Sessions of this node left by a gateway worker that died (their rows outlive it
        until the node's own go): nobody holds their streams any more."""
        rows = await live.sessions_of_node(conn, self.node_id)
        dead = [session_id for session_id, pid in rows if not linux.pid_alive(pid)]
        if dead:
            await live.close_sessions(conn, dead)

    def catch_up(self) -> None:
        for session in list(self.sessions.values()):
            self.spawn(self.reload(session))

    # -- subscriptions -------------------------------------------------------------------------

    async def reload(self, session: Session) -> None:
        """Make the session's watches match its stored subscriptions."""
        rows = await self.best_effort(lambda conn: live.subscriptions_of(conn, session.id),
                                      "read live subscriptions", logging.WARNING)
        if rows is None or session.closed:
            return
        stored = {row["id"]: row for row in rows}
        for watch_id in session.watching.keys() - stored.keys():
            self.drop(session.watching[watch_id])
        for watch_id, row in stored.items():
            key = (row["function"], _canonical(row["args"]), row["job_id"],
                   _canonical(row["claims"]))
            current = session.watching.get(watch_id)
            if current is not None and current.row == key:
                continue
            if current is not None:
                self.drop(current)
            self.add(session, row, key)

    def add(self, session: Session, row: dict, key: tuple) -> None:
        claims = row["claims"]
        watch = Watch(row["id"], session, _expiry(claims), row=key, stored_at=row["created_at"])
        if self.watch_count >= self.capacity:
            self.send(watch, "error", _ended(TOO_MANY_SUBSCRIPTIONS,
                                             "this gateway worker holds as many subscriptions "
                                             "as [gateway.subscriptions] max_per_node allows"))
            self.spawn(self.unsubscribe(watch))
            return
        session.watching[watch.id] = watch
        self.watch_count += 1
        if row["job_id"] is not None:
            watch.job_id = row["job_id"]
            self.jobs.setdefault(watch.job_id, set()).add(watch)
            state = self.job_states.get(watch.job_id)
            if state is not None:
                self.send(watch, "job", state)
            return
        spec = self.registry.functions[row["function"]]
        group_key = (spec.name, key[1], identity_of(claims))  # key[1]: the args, canonical
        group = self.groups.get(group_key)
        if group is None:
            group = self.groups[group_key] = Group(group_key, spec, row["args"], claims)
            for table in spec.live:
                self.readers.setdefault(table, set()).add(group)
        group.watches.add(watch)
        watch.group = group
        if group.last is not None:  # the group's current result (a change not read yet
            self.send(watch, _kind(group.last), group.last)  # follows at the next read)
        elif self.poller is None or self.poller.done():  # its first read runs every group
            self.poller = asyncio.create_task(self.poll_changes(), context=contextvars.Context())
        elif not group.running:  # a new group runs at once, not at the next read
            self.spawn(self.run(group))

    def drop(self, watch: Watch) -> None:
        session = watch.session
        if session.watching.get(watch.id) is watch:
            del session.watching[watch.id]
            self.watch_count -= 1
        if watch.job_id is not None:
            watchers = self.jobs.get(watch.job_id, set())
            watchers.discard(watch)
            if not watchers:
                self.jobs.pop(watch.job_id, None)
                self.job_states.pop(watch.job_id, None)
        group = watch.group
        if group is not None:
            group.watches.discard(watch)
            if not group.watches:
                self.groups.pop(group.key, None)
                for table in group.spec.live:
                    self.readers.get(table, set()).discard(group)

    async def unsubscribe(self, watch: Watch) -> None:
        """Remove a watch that ended here (an expired token, a finished job) from the table."""
        await self.best_effort(lambda conn: live.remove_subscription(
            conn, watch.session.id, watch.id, watch.stored_at), "remove a live subscription")

    def end_watch(self, watch: Watch, event: str, payload: dict | str) -> None:
        self.send(watch, event, payload)
        self.drop(watch)
        self.spawn(self.unsubscribe(watch))

    # -- re-runs -------------------------------------------------------------------------------

    async def poll_changes(self) -> None:
        """While any group exists: read the change log every `debounce_ms` and re-run the
        groups reading the tables written. Every group re-runs instead when the log cannot
        be trusted to hold every change since the last read: the first read, and one after
        a failed read, a late one (rows may be pruned) or a server restart."""
        since: str | None = None
        server_started = None
        read_at = 0.0
        while self.groups and not self.shut:
            changes = await self.best_effort(
                lambda conn, since=since: live.changes_since(conn, since),
                "read the live change log")
            now = time.monotonic()
            if changes is None:
                since = None
            else:
                if (since is None or changes.server_started != server_started
                        or now - read_at > STALE_READ_SECS):
                    self.rerun(list(self.groups.values()))
                else:
                    self.rerun({group for oid in changes.tables
                                for group in self.readers.get(self.tables.get(oid), ())})
                since, server_started, read_at = changes.snapshot, changes.server_started, now
            await asyncio.sleep(self.settings.debounce_ms / 1000)

    def rerun(self, groups: Any) -> None:
        for group in groups:
            if group.running:
                group.dirty = True  # runs again when the current run ends
            elif group.watches:
                self.spawn(self.run(group))

    async def run(self, group: Group) -> None:
        group.running = True
        try:
            while True:
                group.dirty = False
                payload = await self.result_of(group)
                if payload != group.last and group.watches:
                    group.last = payload
                    kind = _kind(payload)
                    for watch in list(group.watches):
                        self.send(watch, kind, payload)
                if not group.dirty or not group.watches:
                    return
        finally:
            group.running = False

    async def result_of(self, group: Group) -> str:
        """The group's query result as sent (its JSON), or the error it raised."""
        try:
            result = await self.runner.run(group.spec, group.args, group.claims,
                                           new_request_id())
            return dumps({"data": to_jsonable(result)})
        except ApiError as exc:
            return dumps({"error": {"code": exc.code, "message": exc.message}})
        except Error as exc:
            api = error_for_app_error(exc)
            return dumps({"error": {"code": api.code, "message": api.message}})
        except Exception:
            log.exception("live query %s failed", group.spec.name,
                          extra={"event": "live.query_failed"})
            return dumps({"error": {"code": INTERNAL_ERROR, "message": "internal error"}})

    # -- housekeeping: expired tokens, job states --------------------------------------------

    async def keep_house(self) -> None:
        """While this worker holds streams: expire tokens every second, keep quiet streams
        alive every `keepalive_secs`, read watched jobs every `job_poll_ms`. With no stream
        left it stops (open() starts it again)."""
        interval = min(self.settings.job_poll_ms / 1000, self.settings.keepalive_secs)
        expired_at = kept_alive_at = time.monotonic()
        while self.sessions and not self.shut:
            await asyncio.sleep(interval)
            now = time.monotonic()
            if now - expired_at >= EXPIRY_CHECK_SECS:
                expired_at = now
                self.expire(time.time())
            if now - kept_alive_at >= self.settings.keepalive_secs:
                kept_alive_at = now
                self.keep_alive()
            if self.jobs:
                await self.poll_jobs()

    def keep_alive(self) -> None:
        for session in list(self.sessions.values()):
            if not session.keep_alive():
                self.disconnect(session)

    def expire(self, now: float) -> None:
        for session in list(self.sessions.values()):
            for watch in list(session.watching.values()):
                if watch.expires_at is not None and watch.expires_at <= now:
                    self.end_watch(watch, "error", _ended(
                        UNAUTHORIZED, "the token of this subscription expired; subscribe "
                                      "again with a new one"))

    async def poll_jobs(self) -> None:
        states = await self.best_effort(lambda conn: jobs.job_states(conn, list(self.jobs)),
                                        "read watched jobs")
        if states is None:
            return  # the next poll tries again
        for job_id, watchers in list(self.jobs.items()):
            state = states.get(job_id)
            if state is None:
                for watch in list(watchers):
                    self.end_watch(watch, "error", _ended(NOT_FOUND, f"no job {job_id}"))
                continue
            state = {"job_id": job_id, **{k: v for k, v in state.items() if k != "id"}}
            if state == self.job_states.get(job_id):
                continue
            self.job_states[job_id] = state
            for watch in list(watchers):
                if state["status"] in TERMINAL_JOB_STATES:
                    self.end_watch(watch, "job", state)
                else:
                    self.send(watch, "job", state)

    def spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _kind(payload: str) -> str:
    return "error" if payload.startswith('{"error"') else "result"


def _ended(code: str, message: str) -> dict:
    """An error that ends the subscription (a query's own errors do not)."""
    return {"error": {"code": code, "message": message}, "ended": True}


def _expiry(claims: dict | None) -> float | None:
    exp = (claims or {}).get("exp")
    return float(exp) if isinstance(exp, int | float) else None


def _subject(claims: dict) -> str | None:
    subject = claims.get("sub")
    return None if subject is None else str(subject)

