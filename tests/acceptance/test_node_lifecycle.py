"""`forge-node run` as a user runs it: real processes, real signals, real PostgreSQL."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.request

import psutil

from forge_node.migrations import internal_migrations
from tests.plugins.nodes import title, wait_until


def node_rows(db):
    return db.execute("SELECT pid, status FROM forge_nodes ORDER BY started_at").fetchall()


def test_the_node_forks_one_titled_child_per_role(make_app, start_node, database_url, db):
    node = start_node(make_app(), database_url).wait_ready()
    assert title(psutil.Process(node.pid)) == "forge-node: supervisor"
    children = node.children()
    assert set(children) == {"gateway", "worker", "scheduler"}
    gunicorn_workers = [title(p) for p in children["gateway"].children()]
    assert gunicorn_workers == ["forge-node: gateway worker"]
    assert node_rows(db) == [(node.pid, "active")]


def test_only_the_configured_roles_are_started(make_app, start_node, database_url, db):
    app = make_app(node={"roles": ["worker"]})
    node = start_node(app, database_url).wait_ready()
    assert set(node.children()) == {"worker", "monitor"}
    row = db.execute("SELECT roles, capabilities FROM forge_nodes").fetchone()
    assert row == (["worker"], ["general"])


def test_the_gateway_serves_health(make_app, start_node, database_url):
    app = make_app()
    start_node(app, database_url).wait_ready()
    with urllib.request.urlopen(f"http://127.0.0.1:{app.port}/_api/health", timeout=5) as resp:
        assert json.load(resp) == {"status": "healthy", "version": "0.1.0"}


def test_sigterm_drains_every_process_and_exits_0(make_app, start_node, database_url, db):
    node = start_node(make_app(), database_url).wait_ready()
    tree = node.tree()
    assert len(tree) == 5  # supervisor, gateway, its worker, worker, scheduler
    started = time.monotonic()
    node.send(signal.SIGTERM)
    assert node.wait(15) == 0
    assert time.monotonic() - started < 5, "an idle node stops within a couple of seconds"
    assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert node_rows(db) == []
    events = [e.get("event") for e in node.events()]
    assert events.index("node.draining") < events.index("node.stopped")


def test_sigint_drains_and_a_second_sigint_stops_at_once(make_app, start_node, database_url):
    slow_module = '''
import signal, time
import forge_node as forge
'''
    app = make_app(module=slow_module, node={"drain_timeout_secs": 60})
    node = start_node(app, database_url).wait_ready()
    tree = node.tree()
    # a gateway that ignores SIGTERM would hold the drain for 60 s
    node.children()["gateway"].suspend()
    node.send(signal.SIGINT)
    node.wait_for_event("node.draining")
    for role in ("worker", "scheduler"):  # the drain went on without the gateway
        node.wait_for_event("role.stopped", where=lambda e, r=role: e["child_role"] == r)
    assert node.proc.poll() is None
    node.send(signal.SIGINT)
    assert node.wait(10) == 0
    assert "node.forced_stop" in [e.get("event") for e in node.events()]
    # the gateway's workers end with their SIGKILLed master: none is left serving
    wait_until(lambda: not [p for p in tree if p.is_running() and p.status() != "zombie"],
               timeout=10, message="every process of the node gone")


def of_worker(event: dict) -> bool:
    return event["child_role"] == "worker"


def test_a_killed_child_is_restarted_after_a_delay_that_grows(make_app, start_node,
                                                              database_url):
    node = start_node(make_app(node={"roles": ["worker"]}), database_url).wait_ready()
    for deaths in (1, 2):
        worker = node.children()["worker"]
        worker.kill()
        died = node.wait_for_event("role.died", where=of_worker, count=deaths)
        assert died["exit"] == "killed by SIGKILL"
        node.wait_for_event("role.ready", where=of_worker, count=deaths + 1)
        assert node.children()["worker"].pid != worker.pid
    first, second = node.restart_delays("worker")  # measured: death to next start
    assert 0.85 <= first <= 1.3, first
    assert second >= 1.5 * first, (first, second)


def test_a_role_that_keeps_dying_marks_the_node_degraded(make_app, start_node, database_url,
                                                        db):
    app = make_app()
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("0.0.0.0", app.port))
        taken.listen()
        node = start_node(app, database_url)
        node.wait_for_event("role.died", where=lambda e: e["child_role"] == "gateway",
                            timeout=30)
        wait_until(lambda: node_rows(db) == [(node.pid, "starting")], message="starting row")
        taken.close()
        node.wait_ready(timeout=30)
    assert node_rows(db) == [(node.pid, "active")]
    gateway = node.children()["gateway"]
    gateway.kill()
    wait_until(lambda: node_rows(db) == [(node.pid, "degraded")], message="degraded row")
    wait_until(lambda: node_rows(db) == [(node.pid, "active")], message="active again")


def test_systemd_hears_ready_after_the_children_and_stopping_on_sigterm(
        make_app, start_node, database_url, tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(30)
        node = start_node(make_app(), database_url, NOTIFY_SOCKET=path)
        assert sock.recv(100) == b"READY=1"
        assert {e.get("event") for e in node.events()} >= {"node.ready"}
        for role in ("gateway", "worker", "scheduler"):
            assert "NOTIFY_SOCKET" not in node.children()[role].environ()
        node.send(signal.SIGTERM)
        assert sock.recv(100) == b"STOPPING=1"
        assert node.wait(15) == 0


def test_three_nodes_on_an_empty_database_apply_each_migration_once(
        make_app, start_node, database_url, db):
    migrations = {"0001_items.sql": "CREATE TABLE items (id int);\n",
                  "0002_counter.sql": "CREATE TABLE runs (n int);\nINSERT INTO runs VALUES (1);\n"}
    nodes = [start_node(make_app(migrations=migrations, node={"roles": ["worker"]}),
                        database_url) for _ in range(3)]
    for node in nodes:
        node.wait_ready()
    assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    applied = db.execute("SELECT source, version FROM forge_migrations ORDER BY 1, 2").fetchall()
    assert applied == [("app", 1), ("app", 2),
                       *(("forge", m.version) for m in internal_migrations())]
    assert len(node_rows(db)) == 3
