"""Live queries and job progress over SSE, through real nodes and real HTTP: a browser's view
stays current whichever node makes the change, at the cost of one query per change."""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import signal
import time
from pathlib import Path

import psycopg
import pytest

from tests.plugins.calls import post_json
from tests.plugins.gateway import SECRET, bearer, hs256_token
from tests.plugins.nodes import wait_until
from tests.plugins.sse import SseStream

MODULE = '''
import os
import time
import forge_node as forge


@forge.query(public=True, live=["notes"])
def notes(ctx, args):
    with open(os.environ["RUNS_FILE"], "a") as runs:
        runs.write(f"{args.get('tag', '')}\\n")
    return ctx.db.execute(
        "SELECT id, body FROM notes WHERE NOT hidden ORDER BY id").fetchall()


@forge.query(live=["notes"], roles=["admin"])
async def note_count(ctx, args):
    cursor = await ctx.db.execute("SELECT count(*) AS n FROM notes")
    return (await cursor.fetchone()).n


@forge.query(public=True)
def not_live(ctx, args):
    return 1


@forge.query(public=True)
def nap(ctx, args):
    with open(os.environ["RUNS_FILE"], "a") as runs:
        runs.write("nap\\n")
    time.sleep(args["secs"])
    return "rested"


@forge.mutation(public=True)
def add_note(ctx, args):
    ctx.db.execute("INSERT INTO notes (body, hidden) VALUES (%s, %s)",
                   [args["body"], args.get("hidden", False)])
    return "added"


@forge.mutation(public=True)
def start_work(ctx, args):
    return ctx.enqueue("work", {"steps": args["steps"]})


@forge.job
def work(ctx, args):
    for step in range(1, args["steps"] + 1):
        time.sleep(0.3)
        ctx.progress(step * 100 // args["steps"], f"step {step}")
'''

MIGRATIONS = {"0001_notes.sql": "CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL, "
                                "hidden boolean NOT NULL DEFAULT false);"}


def post(port: int, path: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
    return post_json(port, path, body, headers, timeout=30)


def call(port: int, name: str, args: dict) -> object:
    status, body = post(port, f"/_api/rpc/{name}", {"args": args})
    assert status == 200, body
    return body["data"]


def subscribe(port: int, session_id: str, sub_id: str, function: str = "notes",
              args: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    return post(port, "/_api/subscribe", {"session_id": session_id, "id": sub_id,
                                          "function": function, "args": args or {}}, headers)


@pytest.fixture
def live_nodes(make_app, start_node, database_url, tmp_path):
    """start(count): gateway nodes of one app on one database, each with its own port."""
    runs = tmp_path / "runs.txt"
    runs.touch()
    started = []

    def start(count: int = 1, roles=("gateway", "function"), workers: int = 2,
              **subscriptions):
        for _ in range(count):
            app = make_app(module=MODULE, migrations=MIGRATIONS, node={"roles": list(roles)},
                           auth={"jwt_secret": SECRET},
                           gateway={"workers": workers,
                                    "subscriptions": {"debounce_ms": 20, **subscriptions}})
            node = start_node(app, database_url, RUNS_FILE=str(runs)).wait_ready()
            node.app = app
            started.append(node)
        return started

    start.runs = runs
    return start


def runs_of(path: Path, tag: str) -> int:
    return path.read_text().splitlines().count(tag)


def test_a_subscriber_gets_the_result_then_every_change_made_on_another_node(live_nodes):
    watched, writer = live_nodes(2)
    stream = SseStream(watched.app.port)
    try:
        session = stream.session_id()
        assert subscribe(watched.app.port, session, "mine")[0] == 200
        first = stream.next()
        assert (first.event, first.data) == ("result", {"id": "mine", "data": []})
        call(writer.app.port, "add_note", {"body": "hello"})
        committed = time.monotonic()
        update = stream.next()
        assert update.event == "result" and update.data["id"] == "mine"
        assert [n["body"] for n in update.data["data"]] == ["hello"]
        assert update.at - committed < 0.2
        call(writer.app.port, "add_note", {"body": "unseen", "hidden": True})
        assert stream.quiet_for(1.0)  # re-run, same result: nothing sent
    finally:
        stream.close()


def test_a_change_committed_just_before_postgres_crashes_still_reaches_subscribers(
        make_app, start_node, own_postgres, tmp_path):
    """The change log is unlogged: a crash empties it, so the gateway re-runs every query."""
    url = own_postgres.url_for(own_postgres.create_database())
    runs = tmp_path / "runs.txt"
    app = make_app(module=MODULE, migrations=MIGRATIONS, node={"roles": ["gateway", "function"]},
                   auth={"jwt_secret": SECRET},  # reads 3 s apart: the crash falls between two
                   gateway={"workers": 1, "subscriptions": {"debounce_ms": 3000}})
    start_node(app, url, RUNS_FILE=str(runs)).wait_ready()
    stream = SseStream(app.port)
    try:
        assert subscribe(app.port, stream.session_id(), "mine")[0] == 200
        assert stream.next().data == {"id": "mine", "data": []}
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO notes (body) VALUES ('just before the crash')")
        own_postgres.stop("immediate")
        own_postgres.start()
        update = stream.next(timeout=30)
        assert [n["body"] for n in update.data["data"]] == ["just before the crash"]
    finally:
        stream.close()


def test_identical_subscriptions_share_one_run_per_change(live_nodes):
    [node] = live_nodes(1, debounce_ms=1000)
    streams = [SseStream(node.app.port) for _ in range(20)]
    try:
        for stream in streams:  # one worker may hold them all, or both: sharing is per worker
            assert subscribe(node.app.port, stream.session_id(), "s", args={"tag": "same"})[0] \
                == 200
        for stream in streams:
            assert stream.next().event == "result"
        before = runs_of(live_nodes.runs, "same")
        assert before <= 4  # a first run per worker holding some (a late read: one more)
        call(node.app.port, "add_note", {"body": "one change"})
        for stream in streams:
            assert [n["body"] for n in stream.next().data["data"]] == ["one change"]
        assert runs_of(live_nodes.runs, "same") - before <= 4  # 20 watches: 2 runs, 4 when
        # a worker's read failed under load and its next one re-ran every group
        burst_began = time.monotonic()
        for _ in range(10):  # a burst of writes, read from the log together
            call(node.app.port, "add_note", {"body": "burst", "hidden": True})
        reads = math.ceil(time.monotonic() - burst_began) + 1  # per worker, at most
        assert reads <= 5, "the burst took too long to show anything"
        assert streams[0].quiet_for(0.5)
        assert runs_of(live_nodes.runs, "same") - before <= 4 + 2 * reads  # not 4 + 2 * 10
    finally:
        for stream in streams:
            stream.close()


def test_job_progress_streams_from_start_to_completion(live_nodes):
    [node] = live_nodes(1, roles=("gateway", "function", "worker"))
    stream = SseStream(node.app.port)
    try:
        session = stream.session_id()
        job_id = call(node.app.port, "start_work", {"steps": 3})
        status, body = post(node.app.port, "/_api/subscribe-job",
                            {"session_id": session, "id": "job", "job_id": job_id})
        assert status == 200, body
        updates = []
        while not updates or updates[-1]["status"] != "completed":
            event = stream.next()
            assert event.event == "job" and event.data["id"] == "job"
            updates.append(event.data)
        assert updates[-1]["progress"] == 100
        assert any(u["status"] == "running" and 0 < (u["progress"] or 0) < 100 for u in updates)
        assert all(u["job_id"] == job_id for u in updates)
    finally:
        stream.close()


def test_a_client_that_stops_reading_is_disconnected(live_nodes, database_url):
    [node] = live_nodes(1, send_queue=5)
    slow = SseStream(node.app.port, read=False)  # reads its first lines, then nothing more
    line = b""
    while not line.startswith(b"data:"):
        line = slow.response.fp.readline()
    session = json.loads(line[5:])["session_id"]
    call(node.app.port, "add_note", {"body": "x" * 1_000_000})  # in every result: each event
    assert subscribe(node.app.port, session, "s")[0] == 200   # is a megabyte, buffers fill
    deadline = time.monotonic() + 60
    while not session_gone(database_url, session):  # a change at a time, until it is cut off
        assert time.monotonic() < deadline, "the slow client's session was never dropped"
        call(node.app.port, "add_note", {"body": "small"})
    node.wait_for_event("live.slow_client")
    fast = SseStream(node.app.port)  # the others are served as ever
    try:
        assert subscribe(node.app.port, fast.session_id(), "s")[0] == 200
        assert fast.next().event == "result"
    finally:
        fast.close()
        slow.conn.close()


def session_gone(database_url: str, session_id: str) -> bool:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM forge_live_sessions WHERE id = %s",
                            [session_id]).fetchone() is None


def test_every_stream_ends_with_shutdown_on_sigterm(live_nodes):
    [node] = live_nodes(1, workers=1)
    streams = [SseStream(node.app.port) for _ in range(4)]
    for stream in streams:
        stream.session_id()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        napping = pool.submit(call, node.app.port, "nap", {"secs": 3})  # keeps the drain open
        wait_until(lambda: runs_of(live_nodes.runs, "nap") == 1, message="the nap to start")
        started = time.monotonic()
        node.send(signal.SIGTERM)
        for stream in streams:
            assert stream.next().event == "shutdown"
            assert stream.ended.wait(5)
        refused = SseStream(node.app.port, read=False)  # draining: no new stream here
        assert refused.status == 503
        assert json.loads(refused.response.read())["error"]["code"] == "SERVICE_UNAVAILABLE"
        assert napping.result() == "rested"  # in-flight calls finish
    assert node.wait(30) == 0
    assert time.monotonic() - started < 10  # the open streams did not hold the drain


def test_tickets_open_a_stream_once_and_tokens_expire(live_nodes):
    [node] = live_nodes(1)
    port = node.app.port
    assert post(port, "/_api/events/ticket", {})[0] == 401
    token = hs256_token({"roles": ["admin"]}, ttl=3)
    status, body = post(port, "/_api/events/ticket", {}, bearer(token))
    assert status == 200, body
    ticket = body["data"]["ticket"]
    stream = SseStream(port, f"/_api/events?ticket={ticket}")
    try:
        session = stream.session_id()
        assert SseStream(port, f"/_api/events?ticket={ticket}", read=False).status == 401
        assert subscribe(port, session, "count", "note_count")[1]["error"]["code"] == \
            "UNAUTHORIZED"  # the subscribing call needs the token too: no anonymous admin
        assert subscribe(port, session, "count", "note_count", headers=bearer(token))[0] == 200
        assert stream.next().data == {"id": "count", "data": 0}
        expired = stream.next(timeout=10)
        assert (expired.event, expired.data["error"]["code"], expired.data["ended"]) == \
            ("error", "UNAUTHORIZED", True)
    finally:
        stream.close()


def test_bad_requests_get_the_json_error_envelope(live_nodes):
    [node] = live_nodes(1)
    port = node.app.port
    stream = SseStream(port)
    try:
        session = stream.session_id()
        other = bearer(hs256_token({"sub": "someone-else", "roles": ["admin"]}))
        cases = [
            ({"session_id": session, "id": "a", "function": "missing"}, None, 404, "NOT_FOUND"),
            ({"session_id": session, "id": "a", "function": "add_note"}, None, 400,
             "INVALID_ARGUMENT"),
            ({"session_id": session, "id": "a", "function": "not_live"}, None, 400,
             "INVALID_ARGUMENT"),
            ({"session_id": session, "id": "a", "function": "notes", "args": [1]}, None, 400,
             "INVALID_ARGUMENT"),
            ({"session_id": "nope", "id": "a", "function": "notes"}, None, 404,
             "SESSION_NOT_FOUND"),
            ({"session_id": session, "function": "notes"}, None, 400, "INVALID_ARGUMENT"),
            ({"session_id": session, "id": "a", "function": "note_count"}, None, 401,
             "UNAUTHORIZED"),
            ({"session_id": session, "id": "a", "function": "notes"}, other, 403, "FORBIDDEN"),
        ]
        for body, headers, status, code in cases:
            got_status, got = post(port, "/_api/subscribe", body, headers)
            assert (got_status, got["error"]["code"]) == (status, code), body
            assert got["success"] is False and got["request_id"]
        assert post(port, "/_api/subscribe-job", {"session_id": session, "id": "j",
                                                  "job_id": 999999})[0] == 404
        assert post(port, "/_api/subscribe-job", {"session_id": session, "id": "j",
                                                  "job_id": "1"})[0] == 400
        assert post(port, "/_api/unsubscribe", {"session_id": "nope", "id": "a"})[0] == 404
        for refused in (SseStream(port, "/_api/events?ticket=forged", read=False),
                        SseStream(port, headers=bearer(hs256_token(ttl=-120)), read=False)):
            assert refused.status == 401  # a forged ticket; an expired token
            assert json.loads(refused.response.read())["error"]["code"] == "UNAUTHORIZED"
        assert stream.quiet_for(0.3)  # none of it reached the stream
    finally:
        stream.close()


def test_unsubscribe_and_reconnect_get_the_current_state(live_nodes):
    [node] = live_nodes(1)
    port = node.app.port
    first = SseStream(port)
    session = first.session_id()
    assert subscribe(port, session, "s")[0] == 200
    assert first.next().data["data"] == []
    call(port, "add_note", {"body": "before"})
    seen = first.next()
    last_id = seen.id
    assert post(port, "/_api/unsubscribe", {"session_id": session, "id": "s"})[0] == 200
    call(port, "add_note", {"body": "while unsubscribed"})
    assert first.quiet_for(0.5)
    first.close()
    call(port, "add_note", {"body": "while away"})
    again = SseStream(port, headers={"Last-Event-ID": last_id})
    try:
        assert subscribe(port, again.session_id(), "s")[0] == 200
        current = again.next()
        assert [n["body"] for n in current.data["data"]] == \
            ["before", "while unsubscribed", "while away"]
    finally:
        again.close()


def test_the_sessions_of_a_killed_gateway_worker_are_forgotten(live_nodes, database_url):
    [node] = live_nodes(1, workers=1)
    stream = SseStream(node.app.port)
    session = stream.session_id()
    with psycopg.connect(database_url, autocommit=True) as conn:
        [(pid,)] = conn.execute("SELECT pid FROM forge_live_sessions WHERE id = %s",
                                [session]).fetchall()
    os.kill(pid, signal.SIGKILL)
    assert stream.ended.wait(10)
    again = SseStream(node.app.port)  # gunicorn's new worker: it forgets them as it starts
    try:
        again.session_id()
        wait_until(lambda: session_gone(database_url, session), timeout=10,
                   message="the dead worker's session to be forgotten")
    finally:
        again.close()


def test_a_quiet_stream_gets_keep_alive_comments(live_nodes):
    [node] = live_nodes(1, keepalive_secs=0.3)
    stream = SseStream(node.app.port)
    try:
        stream.session_id()
        wait_until(lambda: stream.comments >= 3, timeout=5, message="three keep-alives")
        assert stream.quiet_for(0.1)  # comments only: no event
    finally:
        stream.close()


def test_subscriptions_are_limited_per_session_and_per_node(live_nodes):
    [node] = live_nodes(1, workers=1, max_per_session=2, max_per_node=3)
    port = node.app.port
    first, second = SseStream(port), SseStream(port)
    try:
        session = first.session_id()
        for sub_id in ("a", "b", "b"):  # the same id again replaces, within the limit
            assert subscribe(port, session, sub_id, args={"tag": sub_id})[0] == 200
        status, body = subscribe(port, session, "c")
        assert (status, body["error"]["code"]) == (429, "TOO_MANY_SUBSCRIPTIONS")
        other = second.session_id()
        assert subscribe(port, other, "x")[0] == 200  # the worker's third: its last
        assert subscribe(port, other, "y")[0] == 200  # stored, but past the node's limit
        events = [second.next(), second.next()]
        refused = next(e for e in events if e.data["id"] == "y")
        assert (refused.event, refused.data["error"]["code"], refused.data["ended"]) == \
            ("error", "TOO_MANY_SUBSCRIPTIONS", True)
    finally:
        first.close()
        second.close()
