"""The scheduler role with real nodes: one leader, crons once per tick, fast failover."""

from __future__ import annotations

import datetime
import itertools
import json
import signal
import time

import pytest

from tests.plugins.nodes import forge_cli, node_env, wait_until

TICKS = {"0001_ticks.sql": """
    CREATE TABLE ticks (cron text NOT NULL, scheduled_for timestamptz NOT NULL,
                        ran_at timestamptz NOT NULL DEFAULT clock_timestamp());
"""}

CRONS = '''
import forge_node as forge

@forge.cron(every_secs=1, catch_up=True)
def keeper(ctx):
    ctx.db.execute("INSERT INTO ticks (cron, scheduled_for) VALUES ('keeper', %s)",
                   [ctx.scheduled_for])

@forge.cron(every_secs=1)
def skipper(ctx):
    ctx.db.execute("INSERT INTO ticks (cron, scheduled_for) VALUES ('skipper', %s)",
                   [ctx.scheduled_for])
'''


@pytest.fixture
def cluster(make_app, start_node, database_url):
    """A worker-only node that runs the ticks, and a factory of scheduler-only nodes."""
    worker = start_node(make_app(module=CRONS, migrations=TICKS, node={"roles": ["worker"]}),
                        database_url).wait_ready()

    def scheduler():
        app = make_app(module=CRONS, migrations=TICKS, node={"roles": ["scheduler"]})
        return start_node(app, database_url).wait_ready()

    scheduler.worker = worker
    return scheduler


def leader_pid(db):
    row = db.execute("SELECT n.pid FROM forge_leaders l JOIN forge_nodes n ON n.id = l.node_id "
                     "WHERE l.role = 'scheduler'").fetchone()
    return row and row[0]


def enqueued_per_tick(db, cron):
    return db.execute("SELECT args->>'scheduled_for', count(*) FROM forge_jobs WHERE type = %s "
                      "GROUP BY 1 ORDER BY 1", [f"cron:{cron}"]).fetchall()


def ran(db, cron):
    return [row[0] for row in db.execute(
        "SELECT scheduled_for FROM ticks WHERE cron = %s ORDER BY scheduled_for", [cron])]


def assert_consecutive(seconds):
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(seconds)}
    assert gaps <= {1.0}, f"gaps between ticks: {sorted(gaps)}"


def test_one_leader_fires_each_tick_once(cluster, db):
    first, second = cluster(), cluster()
    wait_until(lambda: leader_pid(db) in (first.pid, second.pid), message="a leader")
    wait_until(lambda: len(ran(db, "keeper")) >= 4, timeout=15, message="four ticks")
    assert all(count == 1 for _, count in enqueued_per_tick(db, "keeper"))
    keeper = ran(db, "keeper")
    assert len(set(keeper)) == len(keeper)
    assert_consecutive(keeper)
    assert all(t.microsecond == 0 for t in keeper)
    elected = [n for n in (first, second)
               if any(e.get("event") == "leader.elected" for e in n.events())]
    assert len(elected) == 1


def test_the_standby_takes_over_within_two_seconds_of_a_sigkill(cluster, db):
    first, second = cluster(), cluster()
    wait_until(lambda: leader_pid(db) is not None, message="a leader")
    wait_until(lambda: len(ran(db, "keeper")) >= 2, timeout=15, message="ticks")
    leader, standby = (first, second) if leader_pid(db) == first.pid else (second, first)
    killed_at = time.time()
    for process in leader.tree():
        process.kill()
    fired = standby.wait_for_event("cron.tick", timeout=10)
    fired_at = datetime.datetime.fromisoformat(fired["ts"].replace("Z", "+00:00")).timestamp()
    assert fired_at - killed_at < 2.0, f"took {fired_at - killed_at:.2f} s"
    wait_until(lambda: leader_pid(db) == standby.pid, message="standby leads")
    moment = datetime.datetime.now(datetime.UTC)
    wait_until(lambda: ran(db, "keeper")[-1] > moment + datetime.timedelta(seconds=2),
               timeout=15, message="more ticks")
    keeper = ran(db, "keeper")
    assert len(set(keeper)) == len(keeper), "no tick ran twice"
    assert_consecutive(keeper)  # catch_up=True: none lost
    for cron in ("keeper", "skipper"):
        assert all(count == 1 for _, count in enqueued_per_tick(db, cron))


def test_a_clean_sigterm_of_the_leader_hands_over_promptly(cluster, db):
    first, second = cluster(), cluster()
    wait_until(lambda: leader_pid(db) is not None, message="a leader")
    leader, standby = (first, second) if leader_pid(db) == first.pid else (second, first)
    leader.send(signal.SIGTERM)
    assert leader.wait(15) == 0
    resigned = leader.wait_for_event("leader.resigned")
    elected = standby.wait_for_event("leader.elected")
    gap = (datetime.datetime.fromisoformat(elected["ts"].replace("Z", "+00:00"))
           - datetime.datetime.fromisoformat(resigned["ts"].replace("Z", "+00:00")))
    assert gap.total_seconds() < 0.5
    assert leader_pid(db) == standby.pid


def test_a_leader_that_loses_its_session_stops_leading(cluster, db):
    only = cluster()
    wait_until(lambda: leader_pid(db) == only.pid, message="leads")
    wait_until(lambda: len(ran(db, "keeper")) >= 2, timeout=15, message="ticks")
    terminated = db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name LIKE 'forge-node scheduler % leader'")
    assert terminated.fetchall() == [(True,)]
    only.wait_for_event("leader.lost")
    only.wait_for_event("leader.elected", count=2, timeout=10)
    moment = datetime.datetime.now(datetime.UTC)
    wait_until(lambda: ran(db, "keeper")[-1] > moment + datetime.timedelta(seconds=1),
               timeout=15, message="ticks again")
    keeper = ran(db, "keeper")
    assert len(set(keeper)) == len(keeper)


def test_status_shows_the_leader(cluster, db, database_url):
    node = cluster()
    wait_until(lambda: leader_pid(db) == node.pid, message="leads")
    result = forge_cli("status", "--json", "--config", str(node.app.config_path),
                       env=node_env(database_url))
    [leader] = json.loads(result.stdout)["leaders"]
    node_id = db.execute("SELECT id::text FROM forge_nodes WHERE pid = %s",
                         [node.pid]).fetchone()[0]
    assert (leader["role"], leader["node_id"]) == ("scheduler", node_id)
    assert leader["since"]


def test_after_a_pause_missed_ticks_are_caught_up_or_skipped_and_logged(cluster, db):
    node = cluster()
    wait_until(lambda: len(ran(db, "keeper")) >= 2, timeout=15, message="ticks")
    scheduler = node.children()["scheduler"]
    scheduler.suspend()  # the leader keeps its lock but fires nothing for 3 s
    time.sleep(3.2)
    scheduler.resume()
    moment = datetime.datetime.now(datetime.UTC)
    wait_until(lambda: ran(db, "keeper")[-1] > moment, timeout=10, message="ticks again")
    wait_until(lambda: ran(db, "skipper")[-1] > moment, timeout=10, message="skipper again")
    assert_consecutive(ran(db, "keeper"))  # catch_up=True: every missed tick ran
    skipper = ran(db, "skipper")
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(skipper)]
    assert max(gaps) >= 3, "catch_up=False: the missed ticks were skipped"
    missed = node.wait_for_event("cron.missed", where=lambda e: e["cron"] == "skipper")
    assert missed["skipped"] >= 2
