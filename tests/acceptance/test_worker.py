"""The worker role with real nodes: delivery, capabilities, retries, timeouts, cancellation,
the jobs CLI and the drain."""

from __future__ import annotations

import itertools
import json
import signal
import time

import pytest

import forge_node as forge
from forge_node import app as app_module
from forge_node.migrations import Migrator, all_migrations
from tests.plugins.calls import rpc_data
from tests.plugins.jobs import EXECUTIONS, JOBS_MODULE, executions, job_status, wait_for_jobs
from tests.plugins.nodes import forge_cli, node_env, wait_until


@pytest.fixture
def jobs_app(make_app):
    def make(**sections):
        sections.setdefault("node", {"roles": ["worker"]})
        return make_app(module=JOBS_MODULE, migrations=EXECUTIONS, **sections)
    return make


@pytest.fixture
def enqueue(jobs_app, db, database_url):
    """Enqueue by name on the test's connection, with the job app's registry loaded."""
    app = jobs_app()
    previous = app_module._current
    app_module.load_app(app.root, "app")
    Migrator(database_url, all_migrations(app.root)).up()

    def put(name, args=None, **options):
        return forge.enqueue(db, name, args or {}, **options)

    put.many = lambda name, args_list: forge.enqueue_many(db, name, args_list)
    put.app = app
    yield put
    app_module._current = previous


def test_a_job_runs_and_stores_its_result_and_progress(enqueue, start_node, database_url, db):
    node = start_node(enqueue.app, database_url).wait_ready()
    job_id = enqueue("async_double", {"n": 21})
    wait_for_jobs(db, [job_id])
    shown = forge_cli("jobs", "show", str(job_id), "--json", "--config",
                      str(enqueue.app.config_path), env=node_env(database_url))
    job = json.loads(shown.stdout)
    assert (job["status"], job["result"], job["attempts"], job["progress"]) == \
        ("completed", {"double": 42}, 1, 100)
    assert job["node_id"] is not None and job["started_at"] and job["completed_at"]
    assert node.proc.poll() is None


def worker_has_polled_and_listens(db) -> bool:
    """The worker's claim (its first poll, the next one 10 s away) and its LISTEN have both
    run, as its sessions' last statements show."""
    queries = [q for (q,) in db.execute("SELECT query FROM pg_stat_activity "
                                        "WHERE application_name LIKE 'forge-node worker%'")]
    return any("claimed AS" in q for q in queries) and any(q.startswith("LISTEN") for q in queries)


def test_notify_wakes_the_worker_long_before_the_poll_interval(jobs_app, start_node,
                                                                database_url, db, enqueue):
    app = jobs_app(worker={"poll_interval_ms": 10_000})
    start_node(app, database_url).wait_ready()
    wait_until(lambda: worker_has_polled_and_listens(db), message="first poll and LISTEN done")
    started = time.monotonic()
    job_id = enqueue("once", {"key": "wake"})
    wait_for_jobs(db, [job_id], timeout=5)
    assert time.monotonic() - started < 2


def test_2000_jobs_across_three_nodes_run_exactly_once(jobs_app, start_node, database_url, db,
                                                       enqueue):
    nodes = [start_node(jobs_app(), database_url) for _ in range(3)]
    for node in nodes:
        node.wait_ready()
    ids = enqueue.many("once", [{"key": f"k{i}"} for i in range(2000)])
    wait_for_jobs(db, ids, timeout=120)
    total, distinct, workers = db.execute(
        "SELECT count(*), count(DISTINCT job_key), count(DISTINCT worker_pid) FROM executions"
    ).fetchone()
    assert (total, distinct) == (2000, 2000)
    assert workers == 3, "every node took part"
    assert db.execute("SELECT count(*) FROM forge_jobs WHERE status <> 'completed' "
                      "OR attempts <> 1").fetchone()[0] == 0


def test_capabilities_route_jobs_and_pools_do_not_starve_each_other(
        jobs_app, start_node, database_url, db, enqueue):
    gpu_node = start_node(jobs_app(node={"roles": ["worker"],
                                         "worker_capabilities": ["general", "gpu"]},
                                   worker={"pools": {"gpu": {"max_concurrent_jobs": 2}}}),
                          database_url).wait_ready()
    plain_node = start_node(jobs_app(), database_url).wait_ready()
    gpu_ids = enqueue.many("gpu_work", [{"key": f"gpu{i}", "secs": 1} for i in range(12)])
    wait_until(lambda: len(executions(db, "gpu")) == 2, message="the gpu pool's 2 slots busy")
    started = time.monotonic()
    general_ids = enqueue.many("general_work", [{"key": f"gen{i}"} for i in range(10)])
    wait_for_jobs(db, general_ids, timeout=10)
    assert time.monotonic() - started < 2, "general jobs waited behind the gpu surge"
    assert db.execute("SELECT count(*) FROM forge_jobs WHERE id = ANY(%s) AND status = "
                      "'pending'", [gpu_ids]).fetchone()[0] >= 4, "the gpu pool holds 2 at once"
    gpu_workers = {pid for _, _, pid, _ in executions(db, "gpu")}
    assert gpu_workers == {gpu_node.children()["worker"].pid}
    assert plain_node.children()["worker"].pid not in gpu_workers


def test_failures_retry_with_backoff_then_die_with_the_traceback(enqueue, start_node,
                                                                 database_url, db):
    start_node(enqueue.app, database_url).wait_ready()
    job_id = enqueue("flaky", {"key": "flaky"})
    wait_for_jobs(db, [job_id], status="dead", timeout=20)
    runs = executions(db, "flaky")
    assert [attempt for _, attempt, _, _ in runs] == [1, 2, 3]
    gaps = [(b[3] - a[3]).total_seconds() for a, b in itertools.pairwise(runs)]
    assert 0.3 <= gaps[0] < 1.5 and 0.6 <= gaps[1] < 2.5, gaps
    error = db.execute("SELECT last_error FROM forge_jobs WHERE id = %s", [job_id]).fetchone()[0]
    assert error.startswith("ValueError: flaky says no") and "Traceback" in error


def test_a_permanent_error_is_dead_at_once(enqueue, start_node, database_url, db):
    start_node(enqueue.app, database_url).wait_ready()
    job_id = enqueue("permanent", {"key": "perm"})  # max_attempts=3, retried after 0.1 s
    wait_for_jobs(db, [job_id], status="dead")
    assert len(executions(db, "perm")) == 1
    attempts, error = db.execute("SELECT attempts, last_error FROM forge_jobs WHERE id = %s",
                                 [job_id]).fetchone()
    assert attempts == 1
    assert error.startswith("PermanentError: this will never work")


def test_a_job_over_its_timeout_fails_and_the_worker_carries_on(enqueue, start_node,
                                                                database_url, db):
    node = start_node(enqueue.app, database_url).wait_ready()
    worker = node.children()["worker"]
    slow = enqueue("too_slow", {"key": "slow"})
    wait_for_jobs(db, [slow], status="dead", timeout=10)
    error = db.execute("SELECT last_error FROM forge_jobs WHERE id = %s", [slow]).fetchone()[0]
    assert error == "timed out after 0.5 s"
    after = enqueue("once", {"key": "after"})
    wait_for_jobs(db, [after])
    assert node.children()["worker"].pid == worker.pid


def test_cancel_a_pending_job_and_a_running_one(enqueue, start_node, database_url, db):
    env = node_env(database_url)
    config = ["--config", str(enqueue.app.config_path)]
    later = enqueue("once", {"key": "later"}, delay_secs=60)
    assert "cancelled" in forge_cli("jobs", "cancel", str(later), *config, env=env).stdout
    assert job_status(db, later) == "cancelled"
    start_node(enqueue.app, database_url).wait_ready()
    running = enqueue("until_cancelled", {"key": "loop"})
    wait_for_jobs(db, [running], status="running")
    wait_until(lambda: executions(db, "loop"), message="the job started")
    result = forge_cli("jobs", "cancel", str(running), *config, env=env)
    assert result.returncode == 0 and "asked it to stop" in result.stdout
    wait_for_jobs(db, [running], status="cancelled", timeout=5)
    again = forge_cli("jobs", "cancel", str(running), *config, env=env)
    assert again.returncode == 1 and "already finished" in again.stderr


def test_enqueue_in_a_job_commits_with_the_jobs_work(enqueue, start_node, database_url, db):
    start_node(enqueue.app, database_url).wait_ready()
    ok = enqueue("spawner", {"key": "ok"})
    failing = enqueue("spawner", {"key": "bad", "fail": True})
    wait_for_jobs(db, [ok])
    wait_until(lambda: executions(db, "ok-child"), message="child ran")
    wait_until(lambda: job_status(db, failing) == "pending" or
               job_status(db, failing) == "dead", message="failed attempt recorded")
    children = db.execute("SELECT count(*) FROM forge_jobs WHERE args->>'key' = 'bad-child'")
    assert children.fetchone()[0] == 0


def test_the_jobs_cli(enqueue, start_node, database_url, db):
    env = node_env(database_url)
    config = ["--config", str(enqueue.app.config_path)]
    first = forge_cli("jobs", "enqueue", "once", "--args", '{"key": "cli"}',
                      "--idempotency-key", "cli-1", *config, env=env)
    assert first.returncode == 0, first.stderr
    job_id = int(first.stdout)
    second = forge_cli("jobs", "enqueue", "once", "--args", '{"key": "cli"}',
                       "--idempotency-key", "cli-1", *config, env=env)
    assert int(second.stdout) == job_id
    unknown = forge_cli("jobs", "enqueue", "nope", *config, env=env)
    assert unknown.returncode == 2 and "no job named 'nope'" in unknown.stderr
    bad_args = forge_cli("jobs", "enqueue", "once", "--args", "[1]", *config, env=env)
    assert bad_args.returncode == 2
    listed = json.loads(forge_cli("jobs", "list", "--json", *config, env=env).stdout)
    assert [j["id"] for j in listed] == [job_id]
    assert set(listed[0]) == {"id", "type", "status", "attempts", "max_attempts", "capability",
                              "priority", "node_id", "progress", "last_error", "created_at",
                              "run_at", "started_at", "completed_at"}
    assert forge_cli("jobs", "list", "--status", "dead", "--json", *config,
                     env=env).stdout.strip() == "[]"
    assert forge_cli("jobs", "list", "--status", "nope", *config, env=env).returncode == 2
    assert "once" in forge_cli("jobs", "list", "--type", "once", *config, env=env).stdout
    status = json.loads(forge_cli("status", "--json", *config, env=env).stdout)
    [queue] = status["queues"]
    assert (queue["capability"], queue["pending"], queue["running"], queue["dead"]) == \
        ("*", 1, 0, 0)
    assert queue["oldest_pending_age_secs"] >= 0
    db.execute("UPDATE forge_jobs SET status = 'dead' WHERE id = %s", [job_id])
    assert forge_cli("jobs", "retry", str(job_id), *config, env=env).returncode == 0
    assert job_status(db, job_id) == "pending"
    assert forge_cli("jobs", "retry", str(job_id), *config, env=env).returncode == 1
    assert forge_cli("jobs", "show", "999999", *config, env=env).returncode == 1


def test_sigterm_drains_without_losing_or_stranding_a_job(jobs_app, start_node, database_url,
                                                         db, enqueue):
    app = jobs_app(worker={"max_concurrent_jobs": 2}, node={"roles": ["worker"],
                                                            "drain_timeout_secs": 4})
    node = start_node(app, database_url).wait_ready()
    short = [enqueue("sleeper", {"key": f"short{i}", "secs": 1}) for i in range(2)]
    wait_until(lambda: len(executions(db, "short")) == 2, message="two running")
    queued = enqueue.many("sleeper", [{"key": f"queued{i}", "secs": 1} for i in range(6)])
    wait_until(lambda: db.execute("SELECT count(*) FROM forge_jobs WHERE id = ANY(%s) AND "
                                  "status = 'running'", [queued]).fetchone()[0] == 2,
               message="two claimed into the pool's buffer, not started")
    node.send(signal.SIGTERM)
    assert node.wait(15) == 0
    assert [job_status(db, j) for j in short] == ["completed", "completed"]
    rows = db.execute("SELECT status, attempts, node_id FROM forge_jobs WHERE id = ANY(%s)",
                      [queued]).fetchall()
    assert rows == [("pending", 0, None)] * 6
    assert db.execute("SELECT count(*) FROM forge_jobs WHERE status = 'running'").fetchone()[0] \
        == 0
    released = [e for e in node.events() if e.get("event") == "worker.released"]
    assert sum(e["count"] for e in released) == 2  # the pool's buffer: 2 x its 2 slots, less 2


def test_a_job_longer_than_the_drain_goes_back_to_pending(jobs_app, start_node, database_url,
                                                          db, enqueue):
    app = jobs_app(node={"roles": ["worker"], "drain_timeout_secs": 2})
    node = start_node(app, database_url).wait_ready()
    long_job = enqueue("sleeper", {"key": "long", "secs": 20})
    wait_until(lambda: executions(db, "long"), message="started")
    node.send(signal.SIGTERM)
    assert node.wait(15) == 0
    assert db.execute("SELECT status, attempts FROM forge_jobs WHERE id = %s",
                      [long_job]).fetchone() == ("pending", 0)


def test_a_crashed_worker_gives_its_jobs_back_when_it_restarts(enqueue, start_node,
                                                               database_url, db):
    node = start_node(enqueue.app, database_url).wait_ready()
    job_id = enqueue("sleeper", {"key": "crash", "secs": 30})
    wait_until(lambda: executions(db, "crash"), message="started")
    node.children()["worker"].kill()
    reclaimed = node.wait_for_event("job.reclaimed_after_restart")
    assert reclaimed["job_id"] == job_id
    wait_until(lambda: len(executions(db, "crash")) == 2, timeout=10, message="run again")
    assert [a for _, a, _, _ in executions(db, "crash")] == [1, 2]


def test_a_mutation_that_fails_leaves_no_job(gateway, db):
    gw = gateway(JOBS_MODULE, migrations=EXECUTIONS)
    assert gw.rpc("order", {"key": "kept"}).json["data"] == "ordered"
    failed = gw.rpc("order", {"key": "dropped", "fail": True})
    assert failed.status_code == 422
    keys = [r[0] for r in db.execute("SELECT args->>'key' FROM forge_jobs").fetchall()]
    assert keys == ["kept"]


STATEMENT_TIMEOUT_MODULE = '''
import forge_node as forge

@forge.mutation(public=True)
def start(ctx, args):
    return ctx.enqueue(args["job"], {"secs": args["secs"]})

@forge.job(max_attempts=1)
def sleeps(ctx, args):
    ctx.db.execute("SELECT pg_sleep(%s)", [args["secs"]])

@forge.job(max_attempts=1, timeout_secs=10)
def sleeps_with_its_own_timeout(ctx, args):
    ctx.db.execute("SELECT pg_sleep(%s)", [args["secs"]])
'''


def test_the_statement_timeout_bounds_jobs_unless_they_set_their_own(make_app, start_node,
                                                                       database_url, db):
    app = make_app(module=STATEMENT_TIMEOUT_MODULE, database={"statement_timeout_secs": 0.5},
                   node={"roles": ["gateway", "function", "worker"]})
    start_node(app, database_url).wait_ready()
    bounded = rpc_data(app.port, "start", {"job": "sleeps", "secs": 2})
    own = rpc_data(app.port, "start", {"job": "sleeps_with_its_own_timeout", "secs": 1})
    wait_for_jobs(db, [bounded], status="dead", timeout=20)
    error = db.execute("SELECT last_error FROM forge_jobs WHERE id = %s", [bounded]).fetchone()[0]
    assert "canceling statement due to statement timeout" in error
    wait_for_jobs(db, [own], timeout=20)


def test_a_claim_whose_answer_was_lost_is_given_back_on_the_next_session(
        enqueue, start_node, database_url, db):
    """A claim that committed but whose answer never reached the worker (PostgreSQL crashed
    or ended the session in between) leaves a job running on this node that no slot holds:
    the worker's new session gives it back, and it runs."""
    start_node(enqueue.app, database_url).wait_ready()
    node_id = db.execute("SELECT id FROM forge_nodes").fetchone()[0]
    with db.transaction():  # as the lost claim left it: running here, one attempt spent
        job_id = enqueue("once", {"key": "lost-claim"})
        db.execute("UPDATE forge_jobs SET status = 'running', node_id = %s, attempts = 1, "
                   "started_at = now() WHERE id = %s", [node_id, job_id])
    terminated = db.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = %s", [f"forge-node worker {str(node_id)[:8]}"]).fetchone()[0]
    assert terminated == 2  # the worker's queue session and its listener
    wait_for_jobs(db, [job_id])
    assert len(executions(db, "lost-claim")) == 1
