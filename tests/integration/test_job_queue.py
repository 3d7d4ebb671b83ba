"""The queue's SQL against a real PostgreSQL: enqueue, claim, fencing, reclaim, retention."""

from __future__ import annotations

import uuid

import psycopg
import pytest

import forge_node as forge
from forge_node import app as app_module
from forge_node import jobs
from forge_node.cluster import NodeIdentity, register_node
from forge_node.migrations import Migrator, internal_migrations


@pytest.fixture
def queue_db(database_url, db):
    Migrator(database_url, internal_migrations()).up()
    return db


@pytest.fixture(autouse=True)
def registry():
    """A registry of test jobs, as if an app module had been loaded."""
    previous = app_module._current
    app_module._current = app_module.AppRegistry(module="test")

    @forge.job
    def plain(ctx, args):
        return None

    @forge.job(worker_capability="gpu", max_attempts=5, priority=7, timeout_secs=60)
    def train(ctx, args):
        return None

    yield app_module._current
    app_module._current = previous


def node(db) -> uuid.UUID:
    identity = NodeIdentity.for_this_process(("worker",), ("general",), "test")
    register_node(db, identity, "active")
    return identity.id


def row(db, job_id):
    return db.execute("SELECT status, attempts, node_id, capability, priority, max_attempts, "
                      "timeout_secs FROM forge_jobs WHERE id = %s", [job_id]).fetchone()


def test_enqueue_takes_the_jobs_defaults_and_returns_its_id(queue_db):
    job_id = forge.enqueue(queue_db, "train", {"epochs": 3})
    assert row(queue_db, job_id) == ("pending", 0, None, "gpu", 7, 5, 60.0)
    assert queue_db.execute("SELECT args FROM forge_jobs WHERE id = %s",
                            [job_id]).fetchone()[0] == {"epochs": 3}
    assert row(queue_db, forge.enqueue(queue_db, "plain", priority=-1))[3:5] == ("*", -1)


def test_an_unknown_job_name_fails_at_enqueue_time(queue_db):
    with pytest.raises(forge.UnknownJobError, match="no job named 'nope'"):
        forge.enqueue(queue_db, "nope", {})
    assert queue_db.execute("SELECT count(*) FROM forge_jobs").fetchone()[0] == 0


def test_args_must_be_an_object(queue_db):
    with pytest.raises(TypeError, match="job args must be a dict"):
        forge.enqueue(queue_db, "plain", [1, 2])


def test_an_idempotency_key_of_an_unfinished_job_returns_that_job(queue_db):
    first = forge.enqueue(queue_db, "plain", {"n": 1}, idempotency_key="order-42")
    assert forge.enqueue(queue_db, "plain", {"n": 2}, idempotency_key="order-42") == first
    assert queue_db.execute("SELECT count(*) FROM forge_jobs").fetchone()[0] == 1
    queue_db.execute("UPDATE forge_jobs SET status = 'completed' WHERE id = %s", [first])
    assert forge.enqueue(queue_db, "plain", {}, idempotency_key="order-42") != first


def test_enqueue_joins_the_callers_transaction(database_url, queue_db):
    with psycopg.connect(database_url) as conn:
        forge.enqueue(conn, "plain", {})
        conn.rollback()
    assert queue_db.execute("SELECT count(*) FROM forge_jobs").fetchone()[0] == 0


def test_enqueue_notifies_workers_at_commit(database_url, queue_db):
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN forge_jobs")
        forge.enqueue(queue_db, "train", {})
        forge.enqueue_many(queue_db, "plain", [{}, {}])
        payloads = [n.payload for n in listener.notifies(timeout=2, stop_after=2)]
    assert payloads == ["gpu", "*"]


def test_enqueue_many_inserts_in_order(queue_db):
    ids = forge.enqueue_many(queue_db, "plain", [{"n": i} for i in range(500)])
    assert len(ids) == 500 and ids == sorted(ids)
    args = queue_db.execute("SELECT args->>'n' FROM forge_jobs ORDER BY id").fetchall()
    assert [int(a[0]) for a in args] == list(range(500))


def test_claims_follow_priority_then_time_and_respect_capabilities(queue_db):
    me = node(queue_db)
    low = forge.enqueue(queue_db, "plain", {}, priority=0)
    high = forge.enqueue(queue_db, "plain", {}, priority=5)
    gpu = forge.enqueue(queue_db, "train", {})
    later = forge.enqueue(queue_db, "plain", {}, delay_secs=60)
    queue = jobs.WorkerQueue(queue_db, me)
    assert [j.id for j in queue.claim("general", 10, take_any=True)] == [high, low]
    assert queue.claim("general", 10, take_any=True) == []
    [claimed] = queue.claim("gpu", 10, take_any=False)
    assert (claimed.id, claimed.attempt, claimed.capability) == (gpu, 1, "gpu")
    assert row(queue_db, later)[0] == "pending"


def test_a_pool_that_takes_no_capability_less_jobs_leaves_them(queue_db):
    forge.enqueue(queue_db, "plain", {})
    assert jobs.WorkerQueue(queue_db, node(queue_db)).claim("gpu", 10, take_any=False) == []


def test_completion_is_fenced_on_node_and_attempt(queue_db):
    old, new = node(queue_db), node(queue_db)
    job_id = forge.enqueue(queue_db, "plain", {})
    [claimed_by_old] = jobs.WorkerQueue(queue_db, old).claim("general", 1, True)
    queue_db.execute("UPDATE forge_nodes SET status = 'dead' WHERE id = %s", [old])
    assert [r[0] for r in jobs.reclaim_jobs_of_dead_nodes(queue_db)] == [job_id]
    [claimed_by_new] = jobs.WorkerQueue(queue_db, new).claim("general", 1, True)
    assert claimed_by_new.attempt == 2
    old_queue = jobs.WorkerQueue(queue_db, old)
    assert old_queue.complete([(job_id, 1, {"from": "old"})]) == {}  # fenced out
    assert old_queue.retry(claimed_by_old, 1, "boom") is None
    assert old_queue.bury(claimed_by_old, "boom") is None
    assert old_queue.release([claimed_by_old]) == []
    assert jobs.WorkerQueue(queue_db, new).complete([(job_id, 2, {"from": "new"})]) == \
        {job_id: "completed"}
    assert queue_db.execute("SELECT status, result FROM forge_jobs WHERE id = %s",
                            [job_id]).fetchone() == ("completed", {"from": "new"})


def assert_fenced_out(queue_db, job_id, queue, stale):
    """Every state change `queue` tries with its `stale` claim is refused, and the job stays
    as its current owner has it."""
    before = row(queue_db, job_id)
    assert before[0] == "running"
    assert queue.complete([(job_id, stale.attempt, {"stale": True})]) == {}
    assert queue.retry(stale, 1, "stale failure") is None
    assert queue.bury(stale, "stale failure") is None
    assert queue.release([stale]) == []
    jobs.set_progress(queue_db, stale, queue.node_id, 99, "stale progress")
    assert row(queue_db, job_id) == before
    assert queue_db.execute("SELECT progress FROM forge_jobs WHERE id = %s",
                            [job_id]).fetchone()[0] is None


def test_the_same_attempt_on_another_node_is_fenced_by_the_node(queue_db):
    # A drain gives a claimed job back with its attempt uncounted, so the node that takes it
    # next runs the same attempt number: only the node condition tells the two apart.
    first, second = node(queue_db), node(queue_db)
    job_id = forge.enqueue(queue_db, "plain", {})
    first_queue = jobs.WorkerQueue(queue_db, first)
    [stale] = first_queue.claim("general", 1, True)
    assert first_queue.release([stale]) == [job_id]
    [current] = jobs.WorkerQueue(queue_db, second).claim("general", 1, True)
    assert current.attempt == stale.attempt == 1
    assert_fenced_out(queue_db, job_id, first_queue, stale)


def test_an_earlier_attempt_on_the_same_node_is_fenced_by_the_attempt(queue_db):
    # A timed-out attempt is retried on the same node while its abandoned thread runs on:
    # when that thread finally reports, only the attempt number tells the two apart.
    me = node(queue_db)
    queue = jobs.WorkerQueue(queue_db, me)
    job_id = forge.enqueue(queue_db, "plain", {})
    [stale] = queue.claim("general", 1, True)
    assert queue.retry(stale, 0, "timed out after 1 s") == "pending"
    [current] = queue.claim("general", 1, True)
    assert (current.attempt, stale.attempt) == (2, 1)
    assert_fenced_out(queue_db, job_id, queue, stale)


def test_reclaim_counts_the_lost_attempt_and_buries_the_last_one(queue_db):
    me = node(queue_db)
    queue_db.execute("UPDATE forge_jobs SET max_attempts = 1")
    job_id = forge.enqueue(queue_db, "plain", {})
    queue_db.execute("UPDATE forge_jobs SET max_attempts = 1 WHERE id = %s", [job_id])
    jobs.WorkerQueue(queue_db, me).claim("general", 1, True)
    queue_db.execute("DELETE FROM forge_nodes WHERE id = %s", [me])  # vanished, not just dead
    [(reclaimed, status, dead_node)] = jobs.reclaim_jobs_of_dead_nodes(queue_db)
    assert (reclaimed, status, dead_node) == (job_id, "dead", str(me))
    error = queue_db.execute("SELECT last_error FROM forge_jobs").fetchone()[0]
    assert error == f"node {me} was declared dead while running attempt 1 of this job"


def test_jobs_of_live_nodes_are_not_reclaimed(queue_db):
    me = node(queue_db)
    forge.enqueue(queue_db, "plain", {})
    jobs.WorkerQueue(queue_db, me).claim("general", 1, True)
    assert jobs.reclaim_jobs_of_dead_nodes(queue_db) == []


def test_retry_waits_for_its_backoff_and_bury_is_final(queue_db):
    me = node(queue_db)
    queue = jobs.WorkerQueue(queue_db, me)
    job_id = forge.enqueue(queue_db, "plain", {})
    [claimed] = queue.claim("general", 1, True)
    assert queue.retry(claimed, 60, "ValueError: nope") == "pending"
    assert queue.claim("general", 1, True) == []  # not before its run_at
    queue_db.execute("UPDATE forge_jobs SET run_at = now() WHERE id = %s", [job_id])
    [again] = queue.claim("general", 1, True)
    assert again.attempt == 2
    assert queue.bury(again, "ValueError: still no") == "dead"
    assert queue_db.execute("SELECT status, last_error, completed_at IS NOT NULL FROM forge_jobs"
                            ).fetchone() == ("dead", "ValueError: still no", True)


def test_release_gives_the_attempt_back(queue_db):
    queue = jobs.WorkerQueue(queue_db, node(queue_db))
    job_id = forge.enqueue(queue_db, "plain", {})
    claimed = queue.claim("general", 1, True)
    assert queue.release(claimed) == [job_id]
    assert row(queue_db, job_id)[:3] == ("pending", 0, None)


def test_cancel_is_immediate_when_pending_and_a_request_when_running(queue_db):
    me = node(queue_db)
    queue = jobs.WorkerQueue(queue_db, me)
    pending = forge.enqueue(queue_db, "train", {})
    running = forge.enqueue(queue_db, "plain", {})
    queue.claim("general", 1, True)
    assert jobs.cancel_job(queue_db, pending) == "cancelled"
    assert jobs.cancel_job(queue_db, running) == "running"
    assert queue.cancel_requests() == {running}
    assert queue.complete([(running, 1, None)]) == {running: "cancelled"}
    assert row(queue_db, running)[0] == "cancelled"
    assert jobs.cancel_job(queue_db, running) is None
    assert jobs.retry_dead_job(queue_db, pending)
    assert row(queue_db, pending)[:2] == ("pending", 0)


def test_queue_depths_per_capability(queue_db):
    me = node(queue_db)
    forge.enqueue_many(queue_db, "plain", [{}, {}, {}])
    forge.enqueue(queue_db, "train", {})
    jobs.WorkerQueue(queue_db, me).claim("general", 1, True)
    depths = {d["capability"]: (d["pending"], d["running"], d["dead"])
              for d in jobs.queue_depths(queue_db)}
    assert depths == {"*": (2, 1, 0), "gpu": (1, 0, 0)}


def test_finished_jobs_past_the_retention_are_deleted_in_batches(queue_db):
    ids = forge.enqueue_many(queue_db, "plain", [{} for _ in range(25)])
    queue_db.execute("UPDATE forge_jobs SET status = 'completed', "
                     "completed_at = now() - interval '2 days' WHERE id = ANY(%s)", [ids[:20]])
    queue_db.execute("UPDATE forge_jobs SET status = 'dead', completed_at = now() "
                     "WHERE id = ANY(%s)", [ids[20:22]])
    assert jobs.delete_finished_jobs(queue_db, 86400, batch=6, max_batches=10) == 20
    assert queue_db.execute("SELECT count(*) FROM forge_jobs").fetchone()[0] == 5
