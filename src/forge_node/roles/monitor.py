"""The monitor: the node's health checks when it has no gateway, and its node-level metrics.

Worker-only and scheduler-only machines need probes too, so on a node without the gateway
role this small child serves only `/_api/health` and `/_api/ready` on `[gateway] port`.
Readiness reads the node's own row: `active` means the database answers, every role is up
and the node is not draining (the supervisor writes each change of these at once). The
supervisor stops the monitor last, so it answers 503 for the whole drain.

With metrics exported, the monitor also reports what only the database knows, read at each
collection: nodes by status and job queue depths (cluster-wide figures: every node reports
them, so aggregate with max(), not sum()), whether this node leads each leader role, and
how long this node's last heartbeat took. The supervisor itself exports nothing: it forks,
and OpenTelemetry's threads must not cross a fork.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import falcon
import psycopg
from opentelemetry.metrics import CallbackOptions, Observation

from .. import cluster, db, jobs
from ..config import Config
from ..errors import EXIT_CONFIG
from ..http import correlation, errors
from ..http.resources.health import HealthResource, ReadyResource
from ..leader import ROLE_IDS
from ..process import RoleProcess

log = logging.getLogger(__name__)

CLIENT_TIMEOUT_SECS = 2


class MonitorProcess(RoleProcess):
    role = "monitor"

    def boot(self) -> None:
        super().boot()
        ctx = self.ctx
        self.server = None
        if "gateway" not in ctx.config.node.roles:
            self.status = db.Probe(ctx.database_url, self.purpose,
                                   lambda conn: cluster.node_status(conn, ctx.node_id) or "",
                                   pooled=ctx.pooled)
            self.server = self.probe_server()
        if ctx.config.observability.exports("metrics"):
            NodeGauges(ctx.direct_url, ctx.node_id, ctx.config, self.purpose).register(
                self.telemetry.meter)

    def probe_server(self) -> WSGIServer:
        """The probes' server on `[gateway] port`; exit 78 when the port cannot be had, since
        a restart would meet the same holder (another node on this machine, most often)."""
        port = self.ctx.config.gateway.port
        try:
            # WSGIServer sets SO_REUSEADDR: a restarted monitor binds again at once
            server = make_server("0.0.0.0", port, probe_app(self.readiness),
                                 handler_class=_QuietHandler)
        except OSError as exc:
            log.error("the health checks cannot listen on port %d ([gateway] port in %s): %s; "
                      "give each node on this machine its own [gateway] port", port,
                      self.ctx.config.path.name, exc.strerror or exc,
                      extra={"event": "monitor.port_unavailable", "port": port})
            raise SystemExit(EXIT_CONFIG) from None
        server.timeout = 0  # handle_request() answers a waiting probe, never waits for one
        return server

    def readiness(self) -> tuple[bool, bool]:
        status = self.status.fetch()
        return status is not None, status == "active"

    def run_once(self) -> None:
        """Answer the probe that woke the loop, if any."""
        if self.server is not None:
            self.server.handle_request()

    def wake_fds(self) -> list[int]:
        return [self.server.fileno()] if self.server is not None else []

    def shutdown(self) -> None:
        if self.server is not None:
            self.server.server_close()
        super().shutdown()


def probe_app(readiness: Callable[[], tuple[bool, bool]]) -> falcon.App:
    """Health and readiness, and for anything else the gateway's JSON error envelope."""
    app = falcon.App(middleware=[RequestIdMiddleware()])
    app.add_route("/_api/health", HealthResource())
    app.add_route("/_api/ready", ReadyResource(readiness))
    errors.install_wsgi(app)
    return app


class RequestIdMiddleware:
    """The request id the gateway would give (the client's own when sane), on every answer,
    so a probe's error can be found in a load balancer's log as well as the node's."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.request_id = correlation.request_id_from(req.get_header("x-request-id"))

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        resp.set_header("x-request-id", req.context.request_id)


class NodeGauges:
    """Observable gauges read from the database, one snapshot per collection."""

    def __init__(self, url: str, node_id: Any, config: Config, purpose: str) -> None:
        self.purpose = purpose
        self.node_id = node_id
        self.dead_threshold_secs = config.cluster.dead_threshold_secs
        self.max_age_secs = config.observability.metrics_interval_secs / 2
        # an empty queue reports zeros, not nothing: "*" (no capability) and this node's own
        self.capabilities = ("*", *config.node.worker_capabilities)
        self._snapshot: dict[str, Any] = {}
        self._taken_at = float("-inf")
        self._lock = threading.Lock()
        self._db = db.Dedicated(url, purpose, statement_timeout_secs=5)

    def register(self, meter: Any) -> None:
        meter.create_observable_gauge("cluster.nodes", [self.nodes],
                                      description="Nodes in the registry by status")
        meter.create_observable_gauge("cluster.leader", [self.leader],
                                      description="1 when this node leads the role")
        meter.create_observable_gauge("node.heartbeat_latency_seconds", [self.heartbeat],
                                      unit="s", description="This node's last heartbeat")
        meter.create_observable_gauge("job_queue_depth", [self.queue_depth],
                                      description="Jobs by capability and status")
        meter.create_observable_gauge("job_oldest_pending_age_seconds", [self.oldest_pending],
                                      unit="s", description="Age of the oldest due job")

    def nodes(self, options: CallbackOptions) -> Iterable[Observation]:
        counts: dict[str, int] = dict.fromkeys(
            ("starting", "active", "degraded", "draining", "dead"), 0)
        for node in self.snapshot().get("nodes", ()):
            counts[node["status"]] = counts.get(node["status"], 0) + 1
        return [Observation(n, {"status": status}) for status, n in counts.items()]

    def leader(self, options: CallbackOptions) -> Iterable[Observation]:
        leading = {row["role"] for row in self.snapshot().get("leaders", ())
                   if row["node_id"] == str(self.node_id)}
        return [Observation(int(role in leading), {"role": role}) for role in ROLE_IDS]

    def heartbeat(self, options: CallbackOptions) -> Iterable[Observation]:
        latency = self.snapshot().get("latency_ms")
        return [] if latency is None else [Observation(latency / 1000)]

    def queue_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        snapshot = self.snapshot()
        if not snapshot:
            return []
        queues = {q["capability"]: q for q in snapshot["queues"]}
        for capability in self.capabilities:
            queues.setdefault(capability, {"pending": 0, "running": 0, "dead": 0})
        return [Observation(q[status], {"capability": capability, "status": status})
                for capability, q in queues.items() for status in ("pending", "running", "dead")]

    def oldest_pending(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(q["oldest_pending_age_secs"], {"capability": q["capability"]})
                for q in self.snapshot().get("queues", ())
                if q["oldest_pending_age_secs"] is not None]

    def snapshot(self) -> dict[str, Any]:
        """The figures of this collection; a failed read reports nothing rather than stale."""
        with self._lock:
            if time.monotonic() - self._taken_at < self.max_age_secs:
                return self._snapshot
            self._taken_at = time.monotonic()
            try:
                conn = self._db.get()
                self._snapshot = {
                    "nodes": cluster.list_nodes(conn, self.dead_threshold_secs),
                    "leaders": cluster.list_leaders(conn, self.dead_threshold_secs),
                    "latency_ms": cluster.heartbeat_latency_ms(conn, self.node_id),
                    "queues": jobs.queue_depths(conn)}
            except (psycopg.Error, db.DatabaseUnavailable) as exc:
                log.debug("node metrics unavailable: %s", db.first_line(exc))
                self._db.close()
                self._snapshot = {}
            return self._snapshot


class _QuietHandler(WSGIRequestHandler):
    timeout = CLIENT_TIMEOUT_SECS  # one slow client cannot hold the probe for long

    def log_message(self, format: str, *args: object) -> None:
        return None
