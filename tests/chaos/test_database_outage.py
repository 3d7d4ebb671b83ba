"""PostgreSQL goes away and comes back: readiness follows it, and the node survives."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from tests.plugins.nodes import wait_until
from tests.plugins.usage import cpu_shares, node_processes, over


def ready(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_api/ready", timeout=5) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def rpc(port, name):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/_api/rpc/{name}", data=b"{}",
                                     method="POST", headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=15) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


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
            node.wait_for_event(f"{role}.database_lost", timeout=10)
        shares = cpu_shares(node_processes(node), 4.0)
        assert not over(shares, 0.02), f"busy while the database is down: {over(shares, 0.02)}"
    finally:
        own_postgres.start()
    node.wait_for_event("worker.database_back", timeout=20)
