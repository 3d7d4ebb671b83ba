"""Nodes that die hard or freeze: no orphans, and the cluster notices."""

from __future__ import annotations

import signal

import psutil

from tests.plugins.nodes import wait_until


def alive(processes):
    found = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.NoSuchProcess:
            pass
    return found


def test_a_sigkilled_supervisor_leaves_no_orphans(make_app, start_node, database_url):
    node = start_node(make_app(), database_url).wait_ready()
    tree = node.tree()
    assert len(tree) == 5
    node.send(signal.SIGKILL)
    wait_until(lambda: not alive(tree), timeout=5, message="every child gone")


def status_of(db, pid):
    row = db.execute("SELECT status FROM forge_nodes WHERE pid = %s", [pid]).fetchone()
    return row and row[0]


def test_a_frozen_node_is_declared_dead_and_registers_again_when_it_wakes(
        make_app, start_node, database_url, db):
    roles = {"roles": ["worker"]}
    frozen = start_node(make_app(node=roles), database_url).wait_ready()
    watcher = start_node(make_app(node=roles), database_url).wait_ready()
    psutil.Process(frozen.pid).suspend()  # heartbeats stop; its session stays open
    try:
        wait_until(lambda: status_of(db, frozen.pid) == "dead", timeout=10,
                   message="frozen node marked dead")
        declared = watcher.wait_for_event("node.declared_dead")
        assert declared["dead_node_id"] == str(db.execute(
            "SELECT id FROM forge_nodes WHERE pid = %s", [frozen.pid]).fetchone()[0])
        assert status_of(db, watcher.pid) == "active"
    finally:
        psutil.Process(frozen.pid).resume()
    frozen.wait_for_event("node.registered_again")
    wait_until(lambda: status_of(db, frozen.pid) == "active", message="frozen node back")


def test_the_supervisor_adopts_and_reaps_orphans_like_a_pid_1(make_app, start_node,
                                                              database_url):
    node = start_node(make_app(node={"roles": ["gateway", "function"]}), database_url)
    node.wait_ready()
    master = node.children()["gateway"]
    [worker] = master.children()
    master.kill()
    wait_until(lambda: worker.ppid() == node.pid, timeout=5, interval=0.005,
               message="the orphaned gunicorn worker adopted by the supervisor")
    wait_until(lambda: not worker.is_running(), timeout=10, message="the orphan reaped")
    zombies = [p for p in psutil.Process(node.pid).children() if p.status() == "zombie"]
    assert zombies == []
    node.wait_for_event("role.ready", where=lambda e: e["child_role"] == "gateway", count=2)
