"""Jobs survive dead nodes, frozen nodes and a PostgreSQL restart."""

from __future__ import annotations

import psutil
import psycopg
import pytest

import forge_node as forge
from forge_node import app as app_module
from forge_node.migrations import Migrator, all_migrations
from tests.plugins.jobs import EXECUTIONS, JOBS_MODULE, executions, wait_for_jobs
from tests.plugins.nodes import wait_until


@pytest.fixture
def worker_app(make_app):
    def make(**node):
        return make_app(module=JOBS_MODULE, migrations=EXECUTIONS,
                        node={"roles": ["worker"], **node})
    return make


@pytest.fixture
def registry(worker_app):
    previous = app_module._current
    app = worker_app()
    app_module.load_app(app.root, "app")
    yield app
    app_module._current = previous


def node_of_pid(db, pid):
    return str(db.execute("SELECT id FROM forge_nodes WHERE pid = %s", [pid]).fetchone()[0])


def test_jobs_of_a_sigkilled_node_complete_elsewhere(worker_app, registry, start_node,
                                                     database_url, db):
    doomed = start_node(worker_app(), database_url).wait_ready()
    job_ids = forge.enqueue_many(db, "sleeper", [{"key": f"s{i}", "secs": 1.5}
                                                 for i in range(3)])
    wait_until(lambda: len(executions(db, "s")) == 3, message="running on the doomed node")
    doomed_node = node_of_pid(db, doomed.pid)
    for process in doomed.tree():
        process.kill()
    survivor = start_node(worker_app(), database_url).wait_ready()
    wait_for_jobs(db, job_ids, timeout=30)
    reclaimed = survivor.wait_for_event("job.reclaimed", count=3)
    assert reclaimed["dead_node_id"] == doomed_node
    rows = db.execute("SELECT attempts, last_error FROM forge_jobs WHERE id = ANY(%s)",
                      [job_ids]).fetchall()
    assert all(attempts == 2 for attempts, _ in rows), "the lost attempt counts"
    assert all(f"node {doomed_node} was declared dead" in error for _, error in rows)
    survivor_worker = survivor.children()["worker"].pid
    assert {pid for key, attempt, pid, _ in executions(db, "s") if attempt == 2} == \
        {survivor_worker}


def job_row(db, job_id):
    return db.execute("SELECT status, attempts, node_id::text, result FROM forge_jobs "
                      "WHERE id = %s", [job_id]).fetchone()


def test_a_frozen_node_cannot_complete_a_job_taken_over(worker_app, registry, start_node,
                                                        database_url, db):
    frozen = start_node(worker_app(), database_url).wait_ready()
    # Attempt 1 ends while its node is frozen and reports when the node wakes, while
    # attempt 2 still runs elsewhere: only the fence on node and attempt refuses it (a
    # fence on the status alone would let it through).
    job_id = forge.enqueue(db, "slower_each_attempt", {"key": "fence", "secs": [1, 8]})
    wait_until(lambda: executions(db, "fence"), message="started on the frozen node")
    frozen_tree = [psutil.Process(frozen.pid), frozen.children()["worker"]]
    for process in frozen_tree:
        process.suspend()
    try:
        other = start_node(worker_app(), database_url).wait_ready()
        wait_until(lambda: len(executions(db, "fence")) == 2, timeout=30,
                   message="attempt 2 running on the other node")
    finally:
        for process in frozen_tree:
            process.resume()
    fenced = frozen.wait_for_event("job.fenced", timeout=5)
    assert fenced["job_id"] == job_id
    other_node = node_of_pid(db, other.pid)
    assert job_row(db, job_id) == ("running", 2, other_node, None)
    wait_for_jobs(db, [job_id], timeout=15)
    assert job_row(db, job_id) == ("completed", 2, other_node, {"attempt": 2})


def test_workers_keep_working_across_a_postgres_restart(make_app, start_node, own_postgres):
    url = own_postgres.url_for(own_postgres.create_database())
    app = make_app(module=JOBS_MODULE, migrations=EXECUTIONS,
                   node={"roles": ["worker"]}, worker={"poll_interval_ms": 60_000})
    node = start_node(app, url).wait_ready()
    own_postgres.stop()
    own_postgres.start()
    previous = app_module._current
    app_module.load_app(app.root, "app")
    try:
        with psycopg.connect(url, autocommit=True) as db:
            Migrator(url, all_migrations(app.root)).up()
            node.wait_for_event("listener.back", timeout=30,
                                where=lambda e: e.get("role") == "worker")
            job_id = forge.enqueue(db, "once", {"key": "after-restart"})
            wait_for_jobs(db, [job_id], timeout=10)  # woken by NOTIFY: the poll is 60 s away
    finally:
        app_module._current = previous
    assert node.proc.poll() is None
