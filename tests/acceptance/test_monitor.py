"""The monitor: the health checks of a node without a gateway, as probes and operators meet
them."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import falcon.testing

from forge_node.roles.monitor import probe_app

WORKER_ONLY = {"roles": ["worker"], "drain_timeout_secs": 10}


def answer(port: int, path: str, method: str = "GET",
           headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, dict(resp.headers), json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.load(exc)


def test_a_second_node_on_a_taken_health_port_exits_78_naming_the_port(
        make_app, start_node, database_url, db):
    first = make_app(node=WORKER_ONLY)
    start_node(first, database_url).wait_ready()
    second = make_app(node=WORKER_ONLY, gateway={"port": first.port})
    node = start_node(second, database_url)
    assert node.wait(20) == 78
    output = node.output()
    assert f"cannot listen on port {first.port} ([gateway] port in forge.toml)" in output
    assert "Traceback" not in output
    assert not [e for e in node.events() if e.get("event") == "role.died"], "no restart loop"
    # the node left the registry: it never stays `starting`
    assert db.execute("SELECT count(*) FROM forge_nodes WHERE pid = %s",
                      [node.pid]).fetchone()[0] == 0
    assert db.execute("SELECT status FROM forge_nodes").fetchall() == [("active",)]


def test_every_answer_of_the_monitor_is_the_json_envelope_with_a_request_id(
        make_app, start_node, database_url):
    app = make_app(node=WORKER_ONLY)
    start_node(app, database_url).wait_ready()
    status, headers, body = answer(app.port, "/_api/ready")
    assert (status, body) == (200, {"ready": True, "database": True})
    assert headers["x-request-id"]
    for path, method, expected in [("/_api/nope", "GET", (404, "NOT_FOUND")),
                                   ("/", "GET", (404, "NOT_FOUND")),
                                   ("/_api/health", "POST", (405, "METHOD_NOT_ALLOWED"))]:
        status, headers, body = answer(app.port, path, method, {"x-request-id": "probe-7"})
        assert (status, body["error"]["code"]) == expected, path
        assert body["success"] is False and body["error"]["message"]
        assert body["request_id"] == headers["x-request-id"] == "probe-7"


def test_a_failing_readiness_check_answers_500_in_the_envelope(caplog):
    def broken() -> tuple[bool, bool]:
        raise RuntimeError("secret detail")

    result = falcon.testing.TestClient(probe_app(broken)).simulate_get("/_api/ready")
    assert result.status_code == 500
    assert result.json["error"]["code"] == "INTERNAL_ERROR"
    assert "secret detail" not in result.text
    assert result.json["request_id"] == result.headers["x-request-id"]
    assert "secret detail" in caplog.text  # logged with the request id, never answered
