"""create_app(): the falcon ASGI app each gunicorn (uvicorn) worker builds after it is forked.

    /_api/health          liveness, no database
    /_api/ready           readiness: the database answers and the node is not draining
    /_api/rpc/{name}      queries and mutations
    /_api/events, /_api/events/ticket, /_api/subscribe, /_api/subscribe-job,
    /_api/unsubscribe     live queries and job progress over SSE (resources/events.py)
    /_api/...             anything else under /_api: a JSON 404 (never the frontend)
    everything else       the frontend (static_dir) with SPA fallback, or a JSON 404
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

import falcon
import falcon.asgi

from .. import db
from ..app import AppRegistry
from ..auth import TokenVerifier
from ..config import Config
from ..observability.otel import Telemetry
from . import errors
from .errors import NOT_FOUND, ApiError
from .functions import FunctionRunner
from .livehub import LiveHub
from .middleware import RequestMiddleware
from .resources.events import (
    ClientScriptResource,
    EventsResource,
    SubscribeJobResource,
    SubscribeResource,
    TicketResource,
    UnsubscribeResource,
)
from .resources.frontend import FrontendSink
from .resources.health import HealthResource, ReadyResource
from .resources.rpc import BodyLimits, RpcResource


@dataclass
class DrainFlag:
    """Set when this process starts draining; readiness answers 503 from then on.
    `announce()` runs on the event loop once the drain starts (streams end with it)."""

    draining: bool = False
    announced: bool = False
    on_drain: list[Callable[[], None]] = field(default_factory=list)

    def announce(self) -> None:
        if not self.announced:
            self.announced = True
            for callback in self.on_drain:
                callback()


@dataclass
class GatewayDeps:
    config: Config
    registry: AppRegistry
    telemetry: Telemetry
    database: db.Probe
    runner: FunctionRunner | None
    verifier: TokenVerifier | None
    drain: DrainFlag = field(default_factory=DrainFlag)
    hub: LiveHub | None = None

    @classmethod
    def build(cls, config: Config, database_url: str, registry: AppRegistry,
              telemetry: Telemetry, drain: DrainFlag, purpose: str,
              node_id: UUID, direct_url: str | None = None) -> GatewayDeps:
        """`direct_url`: for live updates' LISTEN, when `database_url` goes through a
        transaction-mode pooler."""
        direct_url = direct_url or database_url
        pooled = direct_url != database_url
        runner = hub = None
        if "function" in config.node.roles:
            runner = FunctionRunner.for_urls(
                database_url,
                config.database.replica_urls if config.database.read_from_replica else (),
                pool_size=config.database.pool_size,
                statement_timeout_secs=config.database.statement_timeout_secs,
                threads=config.gateway.threads, purpose=purpose, telemetry=telemetry,
                replica_max_lag_secs=config.database.replica_max_lag_secs, pooled=pooled)
            runner.open()
            hub = LiveHub(config.gateway.subscriptions, registry, runner, node_id, direct_url,
                          config.gateway.workers)
            drain.on_drain.append(hub.shutdown)
        verifier = TokenVerifier(config.auth) if config.auth.configured else None
        probe = db.Probe(database_url, f"{purpose} ready", pooled=pooled)
        return cls(config, registry, telemetry, probe, runner, verifier, drain, hub)

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
    limits = BodyLimits.of(gateway)
    app.add_route("/_api/rpc/{name}", RpcResource(deps.registry, deps.runner, deps.verifier,
                                                  limits))
    live = (deps.hub, deps.registry, deps.verifier, limits)
    app.add_route("/_api/events", EventsResource(*live))
    app.add_route("/_api/events/ticket", TicketResource(*live))
    app.add_route("/_api/subscribe", SubscribeResource(*live))
    app.add_route("/_api/subscribe-job", SubscribeJobResource(*live))
    app.add_route("/_api/unsubscribe", UnsubscribeResource(*live))
    app.add_route("/_api/client.js", ClientScriptResource())
    app.add_sink(FrontendSink(static_root(deps.config), gateway.frame_ancestors,
                              gateway.referrer_policy), "/")
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
