"""Correlation headers, CORS, quiet routes and the static frontend."""

from __future__ import annotations

import logging
import os
import re

import pytest

from tests.plugins.gateway import SECRET, Gateway

MODULE = '''
import forge_node as forge

@forge.query(public=True)
def ping(ctx, args):
    return "pong"
'''


def test_every_response_carries_request_and_trace_ids(gateway):
    gw = gateway(MODULE)
    for result in (gw.client.simulate_get("/_api/health"), gw.rpc("ping"), gw.rpc("nope"),
                   gw.client.simulate_get("/nowhere")):
        assert re.fullmatch(r"[0-9a-f-]{36}", result.headers["x-request-id"])
        assert re.fullmatch(r"[0-9a-f]{32}", result.headers["x-trace-id"])
        assert re.fullmatch(r"[0-9a-f]{16}", result.headers["x-span-id"])


def test_a_sane_client_request_id_is_kept_and_an_insane_one_replaced(gateway):
    gw = gateway(MODULE)
    kept = gw.rpc("ping", headers={"x-request-id": "client-123.abc"})
    assert kept.headers["x-request-id"] == "client-123.abc"
    assert kept.json["request_id"] == "client-123.abc"
    for bad in ("has spaces", "x" * 200, "semi;colon"):
        replaced = gw.rpc("ping", headers={"x-request-id": bad})
        assert replaced.headers["x-request-id"] != bad


def test_an_inbound_traceparent_joins_its_trace(gateway):
    gw = gateway(MODULE)
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    result = gw.rpc("ping", headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    assert result.headers["x-trace-id"] == trace_id
    assert result.headers["x-span-id"] != parent
    for bad in (f"00-{'0' * 32}-{parent}-01", "garbage", f"ff-{trace_id}-{parent}-01"):
        assert gw.rpc("ping", headers={"traceparent": bad}).headers["x-trace-id"] != trace_id


def test_an_allowed_origin_gets_cors_headers_with_credentials(gateway):
    gw = gateway(MODULE, gateway={"cors_origins": ["https://app.example.com"]})
    result = gw.rpc("ping", headers={"origin": "https://app.example.com"})
    assert result.headers["access-control-allow-origin"] == "https://app.example.com"
    assert result.headers["access-control-allow-credentials"] == "true"
    exposed = result.headers["access-control-expose-headers"]
    assert {"x-request-id", "x-trace-id", "x-span-id"} <= {h.strip() for h in exposed.split(",")}
    assert "Origin" in result.headers["vary"]


def test_other_origins_get_no_cors_headers(gateway):
    gw = gateway(MODULE, gateway={"cors_origins": ["https://app.example.com"]})
    result = gw.rpc("ping", headers={"origin": "https://evil.example.com"})
    assert result.status_code == 200
    assert not [h for h in result.headers if h.lower().startswith("access-control-")]


def test_a_preflight_answers_204_with_methods_and_headers(gateway):
    gw = gateway(MODULE, gateway={"cors_origins": ["https://app.example.com"]})
    result = gw.client.simulate_options("/_api/rpc/ping", headers={
        "origin": "https://app.example.com", "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type"})
    assert result.status_code == 204
    assert "POST" in result.headers["access-control-allow-methods"]
    assert result.headers["access-control-allow-headers"] == "authorization, content-type"
    assert result.headers["access-control-allow-origin"] == "https://app.example.com"
    refused = gw.client.simulate_options("/_api/rpc/ping", headers={
        "origin": "https://evil.example.com", "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in refused.headers


def test_a_wildcard_allows_any_origin_without_credentials(gateway):
    gw = gateway(MODULE, gateway={"cors_origins": ["*"]})
    result = gw.rpc("ping", headers={"origin": "https://anyone.example"})
    assert result.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in result.headers


def test_quiet_routes_leave_no_access_log_line(gateway, caplog):
    gw = gateway(MODULE)
    with caplog.at_level(logging.INFO, logger="forge_node.access"):
        gw.client.simulate_get("/_api/health")
        gw.client.simulate_get("/_api/ready")
        gw.rpc("ping")
    lines = [r for r in caplog.records if r.name == "forge_node.access"]
    assert [(r.method, r.route, r.status) for r in lines] == [("POST", "/_api/rpc/{name}", 200)]
    assert lines[0].request_id and lines[0].duration_ms >= 0


@pytest.fixture
def site(tmp_path):
    root = tmp_path / "site"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text("<html>spa</html>")
    (root / "assets" / "index-D8fK3x9a.js").write_text("console.log(1)")
    (root / "robots.txt").write_text("User-agent: *")
    (tmp_path / "secret.txt").write_text("do not serve")
    os.symlink(tmp_path / "secret.txt", root / "escape.txt")
    return root


def test_the_frontend_serves_files_with_their_type_and_cache(gateway, site):
    gw = gateway(MODULE, gateway={"static_dir": str(site)})
    asset = gw.client.simulate_get("/assets/index-D8fK3x9a.js")
    assert asset.status_code == 200 and asset.text == "console.log(1)"
    assert asset.headers["content-type"] == "text/javascript"
    assert "immutable" in asset.headers["cache-control"]
    robots = gw.client.simulate_get("/robots.txt")
    assert robots.headers["content-type"].startswith("text/plain")
    assert robots.headers["cache-control"] == "no-cache"


def test_other_paths_fall_back_to_index_html_but_api_paths_never_do(gateway, site):
    gw = gateway(MODULE, gateway={"static_dir": str(site)})
    for path in ("/", "/orders/42", "/deep/link/here"):
        result = gw.client.simulate_get(path)
        assert result.status_code == 200 and result.text == "<html>spa</html>", path
        assert result.headers["cache-control"] == "no-cache"
    assert gw.client.simulate_get("/_api/unknown").json["error"]["code"] == "NOT_FOUND"
    assert gw.client.simulate_post("/orders").json["error"]["code"] == "METHOD_NOT_ALLOWED"


@pytest.mark.parametrize("path", ["/../secret.txt", "/assets/../../secret.txt", "/escape.txt",
                                  "/..%2fsecret.txt", "/%2e%2e/secret.txt", "/a\\..\\secret.txt"])
def test_paths_cannot_escape_the_folder(gateway, site, path):
    gw = gateway(MODULE, gateway={"static_dir": str(site)})
    result = gw.client.simulate_get(path)
    assert "do not serve" not in result.text
    assert result.status_code == 404


def test_frontend_build_is_the_default_static_dir(make_app, database_url):
    app = make_app(module=MODULE, auth={"jwt_secret": SECRET})
    build = app.root / "frontend" / "build"
    build.mkdir(parents=True)
    (build / "index.html").write_text("built")
    gw = Gateway(app, database_url)
    try:
        assert gw.client.simulate_get("/anything").text == "built"
    finally:
        gw.close()


def test_without_a_frontend_other_paths_are_json_404s(gateway):
    gw = gateway(MODULE)
    assert gw.client.simulate_get("/").json["error"]["code"] == "NOT_FOUND"
