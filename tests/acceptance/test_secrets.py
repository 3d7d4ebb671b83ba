"""A canary password and a canary token, driven through every error path that could print
or serve them: they must appear in no output, no log line and no HTTP body."""

from __future__ import annotations

import pytest

from tests.plugins.calls import rpc_call
from tests.plugins.gateway import JwksServer
from tests.plugins.nodes import forge_cli, node_env

PASSWORD = "CanaryPassw0rd"
TOKEN = "CanaryT0ken"

BAD_URLS = {
    "another scheme": f"postgresql+psycopg://forge:{PASSWORD}@db.example/app",
    "a key/value string": f"host=db.example password={PASSWORD} dbname=app",
    "a malformed URL": f"postgresql://forge:{PASSWORD}@[::1/app",
}
UNREACHABLE = f"postgresql://forge:{PASSWORD}@127.0.0.1:1/app?sslmode=disable"


def assert_clean(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text and TOKEN not in text
        assert "Traceback" not in text


@pytest.mark.parametrize("kind", list(BAD_URLS))
@pytest.mark.parametrize("where", ["url", "replica"])
def test_a_bad_database_url_is_refused_without_its_password(make_app, kind, where):
    url = BAD_URLS[kind]
    if where == "replica":
        app = make_app(database={"replica_urls": [url], "read_from_replica": True})
        env = node_env("postgresql://forge@127.0.0.1:1/app")
    else:
        app = make_app()
        env = node_env(url)
    check = forge_cli("check", "--config", str(app.config_path), env=env)
    run = forge_cli("run", "--config", str(app.config_path), env=env)
    assert (check.returncode, run.returncode) == (2, 78)
    key = "database.replica_urls[0]" if where == "replica" else "database.url"
    assert key in check.stderr and key in run.stderr
    assert_clean(check.stdout, check.stderr, run.stdout, run.stderr)


def test_an_unreachable_database_is_reported_without_its_password(make_app):
    app = make_app()
    check = forge_cli("check", "--config", str(app.config_path), env=node_env(UNREACHABLE))
    run = forge_cli("run", "--config", str(app.config_path), env=node_env(UNREACHABLE))
    assert (check.returncode, run.returncode) == (1, 1)
    assert "127.0.0.1" in check.stderr + check.stdout
    assert_clean(check.stdout, check.stderr, run.stdout, run.stderr)


def test_an_unreachable_jwks_is_reported_without_its_token(make_app, start_node, database_url):
    keys = JwksServer()  # signs the client's token; the node looks for keys elsewhere
    try:
        app = make_app(module="import forge_node as forge\n\n@forge.query\n"
                              "def private(ctx, args):\n    return 1\n",
                       auth={"jwt_algorithm": "RS256",
                             "jwks_url": f"http://127.0.0.1:1/jwks.json?token={TOKEN}"})
        node = start_node(app, database_url).wait_ready()
        token = keys.token(keys.keys[0])
        status, body = rpc_call(app.port, "private", {}, {"authorization": f"Bearer {token}"})
    finally:
        keys.close()
    assert (status, body["error"]["code"]) == (503, "SERVICE_UNAVAILABLE")
    assert body["error"]["message"] == "the signing keys are unavailable; try again later"
    node.wait_for_event("auth.jwks_unavailable")
    assert "127.0.0.1:1" in node.output()
    assert_clean(str(body), node.output())
