"""Live queries and job progress over SSE, through real nodes and real HTTP: a browser's view
stays current whichever node makes the change, at the cost of one query per change."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.plugins.gateway import SECRET
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
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json",
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


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

    def start(count: int = 1, roles=("gateway", "function"), **subscriptions):
        for _ in range(count):
            app = make_app(module=MODULE, migrations=MIGRATIONS, node={"roles": list(roles)},
                           auth={"jwt_secret": SECRET},
                           gateway={"workers": 2, "subscriptions": {"debounce_ms": 20,
                                                                    **subscriptions}})
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
