"""The registry's services against a real PostgreSQL: register, heartbeat, dead, back."""

from __future__ import annotations

import psycopg
import pytest

from forge_node import cluster
from forge_node.cluster import NodeIdentity
from forge_node.migrations import Migrator, internal_migrations
from forge_node.services.heartbeat import Heartbeat
from forge_node.services.reaper import DeadNodeReaper


@pytest.fixture
def registry(database_url, db):
    Migrator(database_url, internal_migrations()).up()
    return db


def identity(name="n") -> NodeIdentity:
    return NodeIdentity.for_this_process(("worker",), ("general",), "test")


def age(db, node, seconds):
    """Pretend the node's last heartbeat was `seconds` ago."""
    db.execute("UPDATE forge_nodes SET last_heartbeat = now() - make_interval(secs => %s) "
               "WHERE id = %s", [seconds, node.id])


def status_of(db, node):
    row = db.execute("SELECT status FROM forge_nodes WHERE id = %s", [node.id]).fetchone()
    return row and row[0]


def test_heartbeat_registers_then_refreshes_the_row(registry):
    node = identity()
    beat = Heartbeat(node, lambda: "active", 1)
    assert beat.run_once(registry) == "registered"
    age(registry, node, 100)
    assert beat.run_once(registry) == "heartbeat"
    fresh = registry.execute("SELECT now() - last_heartbeat < interval '5 s', roles, "
                             "capabilities, pid FROM forge_nodes WHERE id = %s",
                             [node.id]).fetchone()
    assert fresh == (True, ["worker"], ["general"], node.pid)


def test_the_reaper_marks_silent_nodes_dead_and_spares_the_others(registry):
    silent, alive = identity(), identity()
    for node in (silent, alive):
        Heartbeat(node, lambda: "active", 1).run_once(registry)
    age(registry, silent, 20)
    dead = DeadNodeReaper(threshold_secs=15, interval_secs=5).run_once(registry)
    assert [str(row["id"]) for row in dead] == [str(silent.id)]
    assert (status_of(registry, silent), status_of(registry, alive)) == ("dead", "active")


def test_only_one_reaper_works_at_a_time(registry, database_url):
    node = identity()
    Heartbeat(node, lambda: "active", 1).run_once(registry)
    age(registry, node, 20)
    with psycopg.connect(database_url, autocommit=True) as other:
        with other.transaction():
            other.execute("SELECT pg_advisory_xact_lock(%s)", [cluster.REAPER_LOCK_KEY])
            assert DeadNodeReaper(15, 5).run_once(registry) is None
        assert status_of(registry, node) == "active"
    assert len(DeadNodeReaper(15, 5).run_once(registry)) == 1


def test_a_node_declared_dead_registers_again_when_it_comes_back(registry):
    node = identity()
    beat = Heartbeat(node, lambda: "active", 1)
    beat.run_once(registry)
    age(registry, node, 20)
    DeadNodeReaper(15, 5).run_once(registry)
    assert status_of(registry, node) == "dead"
    assert beat.run_once(registry) == "registered again"
    assert status_of(registry, node) == "active"


def test_list_nodes_shows_a_silent_unmarked_node_as_dead(registry):
    node = identity()
    Heartbeat(node, lambda: "draining", 1).run_once(registry)
    assert [n["status"] for n in cluster.list_nodes(registry, 15)] == ["draining"]
    age(registry, node, 30)
    [row] = cluster.list_nodes(registry, 15)
    assert row["status"] == "dead" and row["heartbeat_age_secs"] >= 30


def test_long_dead_nodes_are_forgotten(registry):
    node = identity()
    Heartbeat(node, lambda: "active", 1).run_once(registry)
    age(registry, node, cluster.DEAD_NODE_RETENTION_SECS + 60)
    DeadNodeReaper(15, 5).run_once(registry)  # marks it dead
    DeadNodeReaper(15, 5).run_once(registry)  # forgets it
    assert status_of(registry, node) is None
