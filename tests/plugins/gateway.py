"""The gateway's falcon app in the test process, against a real PostgreSQL.

For the HTTP contract (routes, errors, auth, CORS, headers, the frontend) a falcon TestClient
is enough; what needs gunicorn and signals (drain, probes) runs `forge-node run` instead.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import falcon.testing
import pytest
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from forge_node import config as config_module
from forge_node.app import load_app
from forge_node.http.app import DrainFlag, GatewayDeps, create_app
from forge_node.migrations import Migrator, all_migrations
from forge_node.observability.otel import Telemetry

from .apps import AppDir

SECRET = "test-secret-that-is-at-least-32-bytes-long"


def hs256_token(claims: dict[str, Any] | None = None, secret: str = SECRET,
                ttl: int = 300) -> str:
    now = int(time.time())
    payload = {"sub": "user-1", "iat": now, "exp": now + ttl, **(claims or {})}
    return jwt.encode({"alg": "HS256"}, payload, OctKey.import_key(secret))


def error_of(result: falcon.testing.Result) -> tuple[int, str]:
    """(status, code) of a JSON error answer, after checking its envelope."""
    body = result.json
    assert body["success"] is False and body["request_id"] == result.headers["x-request-id"]
    return result.status_code, body["error"]["code"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class JwksServer:
    """Serves a JWKS document over HTTP, counting fetches; its keys can be rotated."""

    def __init__(self) -> None:
        self.keys = [RSAKey.generate_key(2048, parameters={"kid": "k1"})]
        self.fetches = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                owner.fetches += 1
                body = json.dumps({"keys": [k.as_dict(private=False) for k in owner.keys]})
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, key: RSAKey, **extra) -> str:
        now = int(time.time())
        return jwt.encode({"alg": "RS256", "kid": key.kid},
                          {"sub": "rs-user", "exp": now + 300, **extra}, key)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Gateway:
    def __init__(self, app_dir: AppDir, database_url: str) -> None:
        self.app_dir = app_dir
        self.config = config_module.load(app_dir.config_path, {"DATABASE_URL": database_url})
        registry = load_app(self.config.root, self.config.project.app)
        Migrator(database_url, all_migrations(self.config.root)).up()
        telemetry = Telemetry.start(self.config.observability, "test", "gateway", "test-node")
        self.deps = GatewayDeps.build(self.config, database_url, registry, telemetry,
                                      DrainFlag(), "test", uuid.uuid4())
        self.client = falcon.testing.TestClient(create_app(self.deps))

    def rpc(self, name: str, args: Any = None, **kwargs: Any) -> falcon.testing.Result:
        body = {} if args is None else {"args": args}
        return self.client.simulate_post(f"/_api/rpc/{name}", json=body, **kwargs)

    def close(self) -> None:
        if self.deps.runner is not None:  # in the loop the TestClient runs the app on
            falcon.async_to_sync(self.deps.runner.aclose)


@pytest.fixture
def gateway(make_app: Callable[..., AppDir], database_url: str) -> Iterator[Callable[..., Gateway]]:
    """gateway(module, migrations=..., **sections) -> a Gateway on a migrated test database."""
    built: list[Gateway] = []

    def build(module: str, migrations: dict[str, str] | None = None,
              **sections: dict[str, Any]) -> Gateway:
        sections.setdefault("auth", {"jwt_secret": SECRET})
        gw = Gateway(make_app(module=module, migrations=migrations, **sections), database_url)
        built.append(gw)
        return gw

    yield build
    for gw in built:
        gw.close()
