"""The gateway through real gunicorn over real HTTP: drain, probes, limits, logs."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import urllib.error
import urllib.request

from tests.plugins.nodes import forge_cli, node_env, wait_until

MODULE = '''
import forge_node as forge

@forge.query(public=True)
def slow(ctx, args):
    ctx.db.execute("SELECT pg_sleep(%s)", [args.get("secs", 2)])  # in flight: pg_stat_activity
    return "done"

@forge.query(public=True)
def ping(ctx, args):
    return "pong"
'''


def get(port, path, timeout=5):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def post(port, path, body, timeout=10):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def gateway_app(make_app, **sections):
    sections.setdefault("node", {"roles": ["gateway", "function"]})
    return make_app(module=MODULE, **sections)


def ask_ready(connection: http.client.HTTPConnection) -> tuple[int, dict]:
    connection.request("GET", "/_api/ready")
    answer = connection.getresponse()
    return answer.status, json.loads(answer.read())


def test_a_request_in_flight_finishes_during_the_drain_while_ready_turns_503(
        make_app, start_node, database_url, db):
    app = gateway_app(make_app, gateway={"workers": 1, "threads": 4})
    node = start_node(app, database_url).wait_ready()
    keepalive = http.client.HTTPConnection("127.0.0.1", app.port, timeout=5)
    keepalive.request("GET", "/_api/ready")
    first = keepalive.getresponse()
    assert first.status == 200
    first.read()
    slow_result = {}
    slow = threading.Thread(target=lambda: slow_result.update(
        answer=post(app.port, "/_api/rpc/slow", {"args": {"secs": 2}})))
    slow.start()
    wait_until(lambda: db.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE "
                                  "'SELECT pg_sleep%%' AND state = 'active'").fetchone()[0],
               message="the slow request in flight")
    node.send(signal.SIGTERM)
    during = wait_until(lambda: (answer := ask_ready(keepalive))[0] == 503 and answer,
                        message="ready turned 503 on the kept-alive connection")
    assert during == (503, {"ready": False, "database": True})
    slow.join(10)
    assert slow_result["answer"] == (200, {"success": True, "data": "done",
                                           "request_id": slow_result["answer"][1]["request_id"]})
    assert node.wait(15) == 0


def test_a_chunked_body_over_the_limit_is_413(make_app, start_node, database_url):
    app = gateway_app(make_app, gateway={"max_body_bytes": 64})
    start_node(app, database_url).wait_ready()
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=5)
    body = iter([b'{"args": {"x": "', b"y" * 100, b'"}}'])
    conn.request("POST", "/_api/rpc/ping", body=body, encode_chunked=True,
                 headers={"content-type": "application/json", "transfer-encoding": "chunked"})
    response = conn.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_requests_are_logged_except_quiet_routes(make_app, start_node, database_url):
    app = gateway_app(make_app)
    node = start_node(app, database_url).wait_ready()
    assert get(app.port, "/_api/health")[0] == 200
    assert get(app.port, "/_api/ready")[0] == 200
    assert post(app.port, "/_api/rpc/ping", {})[0] == 200
    line = node.wait_for_event("http.request")
    assert (line["method"], line["route"], line["status"]) == ("POST", "/_api/rpc/{name}", 200)
    routes = [e["route"] for e in node.events() if e.get("event") == "http.request"]
    assert routes == ["/_api/rpc/{name}"]


def test_a_gateway_whose_functions_need_tokens_refuses_to_start_without_auth(
        make_app, database_url):
    module = "import forge_node as forge\n\n@forge.query\ndef secret(ctx, args):\n    return 1\n"
    app = make_app(module=module)
    result = forge_cli("run", "--config", str(app.config_path), env=node_env(database_url))
    assert result.returncode == 78
    assert "secret need a token" in result.stderr and "[auth]" in result.stderr
    check = forge_cli("check", "--config", str(app.config_path), env=node_env(database_url))
    assert check.returncode == 2


def test_a_node_without_the_gateway_answers_probes(make_app, start_node, database_url):
    app = make_app(node={"roles": ["worker"], "drain_timeout_secs": 3})
    node = start_node(app, database_url).wait_ready()
    assert "monitor" in node.children()
    assert get(app.port, "/_api/health") == (200, {"status": "healthy", "version": "0.1.0"})
    assert get(app.port, "/_api/ready") == (200, {"ready": True, "database": True})
    for path in ("/_api/rpc/ping", "/"):
        assert get(app.port, path)[0] == 404
    node.children()["worker"].kill()
    wait_until(lambda: get(app.port, "/_api/ready")[0] == 503, message="503 while degraded")
    wait_until(lambda: get(app.port, "/_api/ready")[0] == 200, message="ready again")
    node.children()["worker"].suspend()  # a worker slow to drain keeps the node draining
    node.send(signal.SIGTERM)
    wait_until(lambda: get(app.port, "/_api/ready") == (503, {"ready": False, "database": True}),
               message="503 while draining")
    assert node.wait(15) == 0
