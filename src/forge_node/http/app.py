"""create_app(): the falcon ASGI app each gunicorn (uvicorn) worker builds after it is forked.

    /_api/health          liveness, no database
    /_api/ready           readiness: the database answers and the node is not draining
    /_api/rpc/{name}      queries and mutations
    /_api/...             anything else under /_api: a JSON 404 (never the frontend)
    everything else       the frontend (static_dir) with SPA fallback, or a JSON 404
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import falcon
import falcon.asgi

from ..app import AppRegistry
from ..auth import TokenVerifier
from ..config import Config
from ..observability.otel import Telemetry
from . import errors
from .errors import NOT_FOUND, ApiError
from .functions import FunctionRunner
from .middleware import RequestMiddleware
from .resources.frontend import FrontendSink
from .resources.health import DatabaseProbe, HealthResource, ReadyResource
from .resources.rpc import RpcResource


@dataclass
class DrainFlag:
    """Set when this process starts draining; readiness answers 503 from then on."""

    draining: bool = False


@dataclass
class GatewayDeps:
    config: Config
    registry: AppRegistry
    telemetry: Telemetry
    database: DatabaseProbe
    runner: FunctionRunner | None
    verifier: TokenVerifier | None
    drain: DrainFlag = field(default_factory=DrainFlag)

    @classmethod
    def build(cls, config: Config, database_url: str, registry: AppRegistry,
              telemetry: Telemetry, drain: DrainFlag, purpose: str) -> GatewayDeps:
        runner = None
        if "function" in config.node.roles:
            runner = FunctionRunner.for_urls(
                database_url,
                config.database.replica_urls if config.database.read_from_replica else (),
                pool_size=config.database.pool_size,
                statement_timeout_secs=config.database.statement_timeout_secs,
                threads=config.gateway.threads, purpose=purpose, telemetry=telemetry)
            runner.open()
        verifier = TokenVerifier(config.auth) if config.auth.configured else None
        return cls(config, registry, telemetry, DatabaseProbe(database_url, f"{purpose} ready"),
                   runner, verifier, drain)

    def readiness(self) -> tuple[bool, bool]:
        return self.database.fetch() is not None, not self.drain.draining


def create_app(deps: GatewayDeps) -> falcon.asgi.App:
    gateway = deps.config.gateway
    app = falcon.asgi.App(middleware=RequestMiddleware(deps.telemetry, gateway.quiet_routes,
                                                       gateway.cors_origins))
    app.req_options.strip_url_path_trailing_slash = True
    errors.install(app)
    app.add_route("/_api/health", HealthResource(), suffix="async")
    app.add_route("/_api/ready", ReadyResource(deps.readiness), suffix="async")
    app.add_route("/_api/rpc/{name}", RpcResource(deps.registry, deps.runner, deps.verifier,
                                                  gateway.max_body_bytes))
    app.add_sink(FrontendSink(static_root(deps.config)), "/")
    app.add_sink(_api_not_found, r"^/_api(/|$)")
    return app


def static_root(config: Config) -> Path | None:
    """`[gateway] static_dir`, or frontend/build when it exists; relative to the app folder."""
    if config.gateway.static_dir:
        return config.root / config.gateway.static_dir
    default = config.root / "frontend" / "build"
    return default if default.is_dir() else None


async def _api_not_found(req: falcon.Request, resp: falcon.Response, **kwargs: str) -> None:
    raise ApiError(404, NOT_FOUND, f"no API route {req.method} {req.path}")
