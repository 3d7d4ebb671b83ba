"""An idle node is idle: with nothing to do, no process of a node and none of its PostgreSQL
sessions uses more than 2% of a core, whatever its roles: a scheduler leader without crons,
a leader whose next tick is an hour away, a standby scheduler, and the monitor."""

from __future__ import annotations

import json
import urllib.request

from tests.plugins.nodes import wait_until
from tests.plugins.usage import backends_are_local, cpu_shares, node_backends, node_processes, over

LIMIT = 0.02         # of one core, for each process and each session
WINDOW_SECS = 4.0    # long enough for 8 clock ticks of CPU to show at the limit

HOURLY = '''
import forge_node as forge

@forge.query(public=True)
def ping(ctx, args):
    return "pong"

@forge.cron("0 * * * *")
def hourly(ctx):
    pass
'''

EVERY_ROLE = {"roles": ["gateway", "function", "worker", "scheduler"]}


def gateway_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_api/ready", timeout=2) as resp:
            return json.load(resp)["ready"]
    except OSError:
        return False


def settled(node, port: int | None, leads: bool):
    """Ready, serving (when `port` has a gateway), and its scheduler has taken its part."""
    node.wait_ready()
    if port is not None:
        wait_until(lambda: gateway_ready(port), message="the gateway answers ready")
    if leads:
        node.wait_for_event("leader.elected")
    return node


def assert_idle(node, db):
    processes = node_processes(node)
    backends = node_backends(db, node)
    assert backends or not backends_are_local(db), "found none of the node's database sessions"
    shares = cpu_shares({**processes, **backends}, WINDOW_SECS)
    assert len(shares) == len(processes) + len(backends), "a process exited while measured"
    assert not over(shares, LIMIT), f"busy while idle: {over(shares, LIMIT)}; all: " \
        f"{ {name: f'{share:.2%}' for name, share in shares.items()} }"


def test_a_node_with_every_role_and_no_crons_is_idle(make_app, start_node, database_url, db):
    app = make_app(node=EVERY_ROLE)
    node = settled(start_node(app, database_url), app.port, leads=True)
    assert_idle(node, db)


def test_a_leader_whose_next_tick_is_an_hour_away_is_idle(make_app, start_node, database_url,
                                                          db):
    app = make_app(module=HOURLY, node=EVERY_ROLE)
    node = settled(start_node(app, database_url), app.port, leads=True)
    assert_idle(node, db)


def test_a_standby_scheduler_and_the_monitor_are_idle(make_app, start_node, database_url, db):
    leader_app = make_app(node={"roles": ["scheduler"]})
    settled(start_node(leader_app, database_url), None, leads=True)
    app = make_app(node={"roles": ["worker", "scheduler"]})  # no gateway: the monitor probes
    standby = settled(start_node(app, database_url), None, leads=False)
    assert "forge-node: monitor" in node_processes(standby)
    assert_idle(standby, db)
    assert not any(e.get("event") == "leader.elected" for e in standby.events())
