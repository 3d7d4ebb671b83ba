"""PostgreSQL goes away and comes back: readiness follows it, and the node survives."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
import urllib.error
import urllib.request

import psycopg
import pytest

from forge_node.leader import LOCK_CLASS_ID, ROLE_IDS
from tests.plugins.calls import rpc_call
from tests.plugins.nodes import wait_until
from tests.plugins.usage import cpu_shares, node_processes, over


def ready(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_api/ready", timeout=5) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def rpc(port, name):
    return rpc_call(port, name, {})


MODULE = '''
import forge_node as forge

@forge.query(public=True)
def now(ctx, args):
    return ctx.db.execute("SELECT 1 AS one").fetchone()
'''


def test_readiness_fails_while_postgres_is_down_and_recovers_by_itself(
        make_app, start_node, own_postgres):
    url = own_postgres.url_for(own_postgres.create_database())
    app = make_app(module=MODULE, node={"roles": ["gateway", "function", "worker"]})
    node = start_node(app, url).wait_ready()
    assert ready(app.port) == (200, {"ready": True, "database": True})
    assert rpc(app.port, "now")[0] == 200
    own_postgres.stop()
    try:
        node.wait_for_event("node.database_lost", timeout=10)  # the heartbeat noticed too
        assert ready(app.port) == (503, {"ready": False, "database": False})
        status, body = rpc(app.port, "now")
        assert (status, body["error"]["code"]) == (503, "SERVICE_UNAVAILABLE")
    finally:
        own_postgres.start()
    wait_until(lambda: ready(app.port) == (200, {"ready": True, "database": True}),
               timeout=20, message="ready again")
    wait_until(lambda: rpc(app.port, "now")[0] == 200, timeout=20,
               message="functions answer again")
    assert rpc(app.port, "now")[1]["data"] == {"one": 1}
    assert node.proc.poll() is None
    node.wait_for_event("node.database_back", timeout=10)


def test_roles_wait_for_the_database_without_spinning(make_app, start_node, own_postgres):
    """While PostgreSQL is down, each role retries about once a second and otherwise sleeps:
    a due poll or a dead connection's socket does not turn its loop at once."""
    url = own_postgres.url_for(own_postgres.create_database())
    app = make_app(node={"roles": ["gateway", "function", "worker", "scheduler"]})
    node = start_node(app, url).wait_ready()
    node.wait_for_event("leader.elected")
    own_postgres.stop()
    try:
        for role in ("worker", "scheduler"):
            node.wait_for_event("role.database_lost", timeout=10,
                                 where=lambda e, role=role: e.get("role") == role)
        shares = cpu_shares(node_processes(node), 4.0)
        assert not over(shares, 0.02), f"busy while the database is down: {over(shares, 0.02)}"
    finally:
        own_postgres.start()
    node.wait_for_event("role.database_back", timeout=20,
                        where=lambda e: e.get("role") == "worker")


FAULTS_MODULE = '''
import forge_node as forge

@forge.query(public=True)
def now(ctx, args):
    return ctx.db.execute("SELECT 1 AS one").fetchone()


@forge.query(public=True)
async def now_async(ctx, args):
    cursor = await ctx.db.execute("SELECT 1 AS one")
    return await cursor.fetchone()


@forge.mutation(public=True)
def start(ctx, args):
    return ctx.enqueue("work", {})


@forge.job
def work(ctx, args):
    ctx.db.execute("SELECT 1")
'''


def terminate_forge_sessions(url):
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE application_name LIKE 'forge-node%'")


@pytest.mark.parametrize("fault", ["restart", "crash", "terminate"])
def test_no_call_fails_once_ready_answers_after_a_database_fault(make_app, start_node,
                                                                  own_postgres, fault):
    """PostgreSQL restarts (-m fast), crashes (-m immediate) or ends every forge-node session
    while calls and jobs keep coming: readiness goes 503 and back; after /_api/ready answers
    200, no call fails (the pools never hand out a connection the fault killed); no job is
    lost, the scheduler leads again, and the node never restarts."""
    url = own_postgres.url_for(own_postgres.create_database())
    app = make_app(module=FAULTS_MODULE, gateway={"workers": 1},
                   node={"roles": ["gateway", "function", "worker", "scheduler"]})
    node = start_node(app, url).wait_ready()
    jobs = [rpc(app.port, "start")[1]["data"] for _ in range(20)]
    stop = threading.Event()

    readiness = []

    def keep_calling(name):  # keeps the pools' connections freshly used up to the fault
        while not stop.is_set():
            status, body = rpc(app.port, name)
            if name == "start" and status == 200:  # every job enqueued, even mid-fault,
                jobs.append(body["data"])           # must complete

    def watch_readiness():  # a thread of its own: a call may wait out the outage
        while not stop.is_set():
            readiness.append(ready(app.port)[0])
            stop.wait(0.05)

    threads = [threading.Thread(target=watch_readiness),
               *(threading.Thread(target=keep_calling, args=(name,))
                 for name in ("now", "now_async", "start"))]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(jobs) >= 60, timeout=30, message="jobs flowing")
        if fault == "terminate":
            terminate_forge_sessions(url)
        else:
            own_postgres.stop("immediate" if fault == "crash" else "fast")
            own_postgres.start()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    if fault != "terminate":  # sessions ended one by one: the probe may reconnect at once
        assert 503 in readiness
    fault_over = time.monotonic()
    wait_until(lambda: ready(app.port)[0] == 200, timeout=30, message="ready again")
    ready_after = time.monotonic() - fault_over
    failed = [(name, status, body) for name in ("now", "now_async") * 30
              for status, body in [rpc(app.port, name)] if status != 200]
    print(f"{fault}: readiness {sorted(set(readiness))} during it; ready {ready_after:.2f} s "
          f"after the fault; 60 calls after, {len(failed)} failed; {len(jobs) + 1} jobs "
          "enqueued")  # the figures of docs/reliability.md (pytest -s)
    assert failed == []
    jobs.append(rpc(app.port, "start")[1]["data"])
    with psycopg.connect(url, autocommit=True) as conn:
        def statuses():
            return dict(conn.execute("SELECT status, count(*) FROM forge_jobs "
                                     "WHERE id = ANY(%s) GROUP BY 1", [jobs]).fetchall())

        try:
            wait_until(lambda: statuses() == {"completed": len(jobs)}, timeout=30)
        except AssertionError:
            raise AssertionError(f"of {len(jobs)} jobs: {statuses()}") from None
        wait_until(lambda: conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid = %s AND objid = %s", [LOCK_CLASS_ID, ROLE_IDS["scheduler"]]
        ).fetchone()[0] == 1, timeout=10, message="the scheduler leads again")
        wait_until(lambda: conn.execute("SELECT status FROM forge_nodes").fetchall()
                   == [("active",)], timeout=10, message="the node active again")
    assert node.proc.poll() is None


POOL_MODULE = '''
import forge_node as forge

@forge.query(public=True)
def slow(ctx, args):
    return ctx.db.execute("SELECT pg_sleep(0.3) IS NULL AS slept").fetchone()


@forge.query(public=True)
async def slow_async(ctx, args):
    cursor = await ctx.db.execute("SELECT pg_sleep(0.3) IS NULL AS slept")
    return await cursor.fetchone()
'''


def test_a_gateway_process_opens_at_most_pool_size_connections(make_app, start_node,
                                                                database_url, db):
    app = make_app(module=POOL_MODULE, database={"pool_size": 4},
                   gateway={"workers": 1, "threads": 8})
    start_node(app, database_url).wait_ready()
    seen = []

    def count_function_sessions():
        seen.append(db.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name ~ '^forge-node gateway \\S+ pid \\d+$'").fetchone()[0])
        return seen[-1]

    with concurrent.futures.ThreadPoolExecutor(24) as calls:
        answers = [calls.submit(rpc, app.port, name) for name in ("slow", "slow_async") * 12]
        while not all(answer.done() for answer in answers):
            count_function_sessions()
    assert all(answer.result()[0] == 200 for answer in answers)
    assert 2 <= max(seen) <= 4
