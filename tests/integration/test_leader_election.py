"""Leader election on real PostgreSQL sessions."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from forge_node.leader import CHECK_INTERVAL_SECS, LEADER_CHANNEL, LeaderElection
from forge_node.migrations import Migrator, internal_migrations


@pytest.fixture
def election(database_url, db):
    Migrator(database_url, internal_migrations()).up()
    made = []

    def make():
        made.append(LeaderElection(database_url, "scheduler", uuid.uuid4(), "test"))
        return made[-1]

    yield make
    for candidate in made:
        candidate.close()


def leader_row(db):
    return db.execute("SELECT node_id FROM forge_leaders WHERE role = 'scheduler'").fetchone()


def test_one_candidate_leads_and_is_recorded(election, db):
    first, second = election(), election()
    assert first.try_acquire() and first.still_leader()
    assert not second.try_acquire()
    assert leader_row(db) == (first.node_id,)


def test_a_closed_session_frees_the_lock_for_a_standby(election, db):
    first, second = election(), election()
    first.try_acquire()
    first.close()  # as a SIGKILLed node's session would end
    assert second.try_acquire()
    assert leader_row(db) == (second.node_id,)


def test_resigning_unlocks_and_wakes_the_standbys(election, db, database_url):
    first, second = election(), election()
    first.try_acquire()
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {LEADER_CHANNEL}")
        first.resign()
        assert [n.payload for n in listener.notifies(timeout=2, stop_after=1)] == ["scheduler"]
    assert leader_row(db) is None
    assert second.try_acquire()


def test_a_terminated_session_ends_the_leadership(election, db):
    first = election()
    first.try_acquire()
    db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
               "WHERE application_name = 'forge-node test leader'")
    assert not first.still_leader(before_acting=True)
    assert not first.is_leader
    assert first.try_acquire()


def test_the_lock_is_proved_once_a_second_and_before_acting(election, db, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("forge_node.leader.time.monotonic", lambda: clock[0])
    first = election()
    first.try_acquire()
    db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
               "WHERE application_name = 'forge-node test leader'")
    assert first.still_leader()  # proved at election, less than CHECK_INTERVAL_SECS ago
    clock[0] += CHECK_INTERVAL_SECS
    assert not first.still_leader()  # due: the round trip finds the session gone
    assert first.try_acquire()
    assert first.still_leader()
    db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
               "WHERE application_name = 'forge-node test leader'")
    assert not first.still_leader(before_acting=True)  # not due, but about to fire a tick
