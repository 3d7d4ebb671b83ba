"""What every answer of a real node says about itself, and what its text log lines let
through: security headers, no banner, RFC 6750 challenges, one event per line."""

from __future__ import annotations

import http.client
import json
import time

import pytest

from tests.plugins.gateway import SECRET, bearer, hs256_token
from tests.plugins.nodes import shared_node, wait_until

MODULE = '''
import forge_node as forge

@forge.query(public=True)
def hello(ctx, args):
    return "hi"

@forge.query
def private(ctx, args):
    return "secret"
'''

ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def node(pg_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("security")
    static = folder / "static"
    static.mkdir()
    (static / "index.html").write_text("<!doctype html><title>app</title>")
    with shared_node(pg_server, folder, MODULE, auth={"jwt_secret": SECRET},
                     gateway={"cors_origins": [ORIGIN], "static_dir": str(static)}) as started:
        yield started


def ask(node, method: str, path: str, body: bytes | None = None,
        headers: dict | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", node.app.port, timeout=10)
    conn.request(method, path, body=body, headers={"content-type": "application/json",
                                                    **(headers or {})})
    resp = conn.getresponse()
    resp.body = resp.read()
    conn.close()
    return resp


ANSWERS = {
    "a call": ("POST", "/_api/rpc/hello", b"{}", {}),
    "a call from an allowed origin": ("POST", "/_api/rpc/hello", b"{}", {"origin": ORIGIN}),
    "a call from another origin": ("POST", "/_api/rpc/hello", b"{}",
                                   {"origin": "https://evil.example"}),
    "a bad body": ("POST", "/_api/rpc/hello", b"[", {}),
    "no token": ("POST", "/_api/rpc/private", b"{}", {}),
    "an unknown function": ("POST", "/_api/rpc/nonesuch", b"{}", {}),
    "health": ("GET", "/_api/health", None, {}),
    "readiness": ("GET", "/_api/ready", None, {}),
    "an unknown API path": ("GET", "/_api/nothing", None, {}),
    "a page": ("GET", "/", None, {}),
    "a client-side route": ("GET", "/notes/42", None, {}),
    "a preflight": ("OPTIONS", "/_api/rpc/hello", None,
                    {"origin": ORIGIN, "access-control-request-method": "POST"}),
}


@pytest.mark.parametrize("kind", list(ANSWERS))
def test_every_answer_has_nosniff_vary_origin_and_no_banner(node, kind):
    method, path, body, headers = ANSWERS[kind]
    resp = ask(node, method, path, body, headers)
    assert resp.getheader("x-content-type-options") == "nosniff"
    assert "origin" in [v.strip().lower() for v in ",".join(
        resp.headers.get_all("vary") or []).split(",")]
    assert resp.getheader("server") is None
    assert resp.getheader("x-request-id")


@pytest.mark.parametrize("path", ["/", "/notes/42"])
def test_pages_cannot_be_framed_and_leak_no_referrer(node, path):
    resp = ask(node, "GET", path)
    assert resp.status == 200
    assert resp.getheader("content-security-policy") == "frame-ancestors 'none'"
    assert resp.getheader("x-frame-options") == "DENY"
    assert resp.getheader("referrer-policy") == "no-referrer"


@pytest.mark.parametrize("token", [None, "not-a-jwt", "expired"])
def test_a_401_says_how_to_authenticate(node, token):
    if token == "expired":
        token = hs256_token({"sub": "u", "exp": int(time.time()) - 60})
    headers = bearer(token) if token else {}
    resp = ask(node, "POST", "/_api/rpc/private", b"{}", headers)
    assert resp.status == 401
    challenge = resp.getheader("www-authenticate")
    assert challenge.startswith('Bearer error="invalid_token", error_description="')
    assert json.loads(resp.body)["error"]["code"] == "UNAUTHORIZED"


def answers(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/_api/health")
        return conn.getresponse().status == 200
    except OSError:
        return False


def test_a_path_cannot_forge_a_text_log_line(make_app, start_node, database_url):
    app = make_app(module=MODULE, auth={"jwt_secret": SECRET},
                   observability={"log_format": "text"})
    node = start_node(app, database_url)  # its lines are text: wait on HTTP, not on events
    wait_until(lambda: answers(app.port), timeout=30, message="the gateway answers")
    forged = "/x%0a2026-12-06T00:00:00Z%20INFO%20[gateway]%20FORGED%1b[2J%0d"
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=10)
    conn.request("GET", forged)
    conn.getresponse().read()
    conn.close()
    wait_until(lambda: "FORGED" in node.log_path.read_text(), message="the access line")
    lines = [line for line in node.log_path.read_text().splitlines() if "FORGED" in line]
    assert len(lines) == 1  # one event, one line
    assert lines[0].startswith("20") and "[gateway" in lines[0]
    assert "\\n2026-12-06T00:00:00Z INFO [gateway] FORGED\\x1b[2J" in lines[0]
    assert "\x1b" not in node.log_path.read_text()
