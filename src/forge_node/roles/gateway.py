"""The gateway role: a gunicorn master (embedded through its application API) whose uvicorn
workers (uvloop, httptools) serve the falcon ASGI app.

Every gunicorn setting is set here explicitly: gunicorn otherwise reads PORT,
WEB_CONCURRENCY and FORWARDED_ALLOW_IPS from the environment, and opens a control socket.

The gateway child has the shape of every role process: it runs the role loop of
`process.py` (reports to the supervisor, the orphan check, the drain), and gunicorn's
arbiter is a library it drives. `boot()` starts the arbiter (binds the port, forks the
workers); each turn reaps, times out and replaces workers; `shutdown()` stops them
gracefully within the drain timeout. gunicorn's signal handlers are replaced by the role's:
SIGTERM, SIGINT and SIGQUIT drain, SIGCHLD wakes the loop to reap.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import time
from typing import Any, ClassVar

import setproctitle
import uvicorn
from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer
from gunicorn.workers.base import Worker
from uvicorn_worker import UvicornWorker

from ..errors import EXIT_CONFIG
from ..http.app import DrainFlag, GatewayDeps, create_app
from ..http.connections import GatewayHttpProtocol
from ..observability.otel import Telemetry
from ..process import RoleProcess, end_with_parent

log = logging.getLogger(__name__)

# A drain's first step lasts at least this long, even with nothing in flight: a balancer
# that probes readiness more often sees the 503 and stops routing before the port closes
# (ending at the first idle tick, it could close under a request just routed to it).
MIN_ANNOUNCE_SECS = 1.0


class GatewayProcess(RoleProcess):
    role = "gateway"

    def boot(self) -> None:
        """Start gunicorn's arbiter and fork its workers. (No telemetry in this process: the
        workers build their own after they are forked.)"""
        try:
            self.arbiter = Arbiter(GatewayServer(self))
        except SystemExit:
            # gunicorn printed why it refused its settings; a restart cannot fix them
            raise SystemExit(EXIT_CONFIG) from None
        self.halted: HaltServer | None = None
        self.arbiter.start()  # binds the port; installs gunicorn's handlers, replaced next
        self.install_signal_handlers()
        signal.signal(signal.SIGQUIT, self.handle_stop)
        signal.signal(signal.SIGCHLD, self.handle_chld)
        self.arbiter.manage_workers()
        setproctitle.setproctitle("forge-node: gateway")

    def run_once(self) -> None:
        """Reap exited workers, kill silent ones, fork what is missing."""
        try:
            self.arbiter.reap_workers()
            self.arbiter.murder_workers()
            self.arbiter.manage_workers()
        except HaltServer as exc:  # a worker failed to boot: restarting it would not help
            log.error("gateway stopping: %s", exc.reason, extra={"event": "gateway.halted"})
            self.halted = exc
            self.stop()

    def handle_chld(self, signum: int, frame: object) -> None:
        """SIGCHLD: a worker exited; the loop wakes (the wakeup pipe) and reaps it."""

    def shutdown(self) -> None:
        """Close the port, SIGTERM the workers, wait for them up to the drain timeout."""
        self.arbiter.stop(graceful=True)
        self.waker.close()
        if self.halted is not None:
            raise SystemExit(self.halted.exit_status)


class GatewayWorker(UvicornWorker):
    """A uvicorn worker under gunicorn's master. uvicorn's own messages go through
    forge-node's log lines; access logs are forge-node's (uvicorn's are off)."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "uvloop", "lifespan": "off", "access_log": False, "server_header": False,
        "proxy_headers": False}  # http: GatewayHttpProtocol (httptools), set in __init__

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        logger = logging.getLogger("uvicorn.error")
        logger.handlers.clear()
        logger.propagate = True
        gateway = self.app.process.ctx.config.gateway
        # the drain's second step ends in time, even for a request that never does: the first
        # step takes up to half of graceful_timeout (DrainingServer), this the rest but a second
        self.config.timeout_graceful_shutdown = max(1, self.cfg.graceful_timeout // 2 - 1)
        self.config.http = GatewayHttpProtocol.with_limits(
            gateway.header_timeout_secs, gateway.body_timeout_secs, gateway.max_connections)

    async def _serve(self) -> None:
        self.config.app = self.wsgi  # gunicorn's name for the app this worker loaded
        server = DrainingServer(self.config, self.app.drain, self.cfg.graceful_timeout / 2)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain in two steps.

    SIGTERM turns readiness to 503 at once, and the worker goes on serving, so the probes and
    load balancers see that 503 on the connections they hold, until no request is in flight
    and MIN_ANNOUNCE_SECS have passed (at most `announce_secs`). Then uvicorn's own shutdown
    stops accepting, closes the idle connections and lets the requests still running finish.
    SIGQUIT, or a second signal, goes straight to the second step.
    """

    def __init__(self, config: uvicorn.Config, drain: DrainFlag, announce_secs: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.announce_secs = announce_secs
        self.drain_started_at: float | None = None

    def handle_exit(self, sig: int, frame: object) -> None:
        self.drain.draining = True
        if self.drain_started_at is None and sig != signal.SIGQUIT:
            self.drain_started_at = time.monotonic()
        else:
            super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        """Every 0.1 s: end the first step of a drain once nothing is in flight and the
        readiness probes had MIN_ANNOUNCE_SECS to see the 503."""
        started = self.drain_started_at
        if started is not None:
            self.drain.announce()  # here, on the loop: live streams end with `shutdown`
            draining_for = time.monotonic() - started
            idle = not self.server_state.tasks and draining_for >= MIN_ANNOUNCE_SECS
            if idle or draining_for >= self.announce_secs:
                self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list | None = None) -> None:
        self.drain.announce()  # a stop without the first step (SIGQUIT, a second signal)
        await super().shutdown(sockets)


class GatewayLogger(glogging.Logger):
    """gunicorn's own messages go through forge-node's log lines; access logs are ours."""

    def setup(self, cfg: object) -> None:
        self.cfg = cfg
        self._access_log_enabled = False
        for logger in (self.error_log, self.access_log):
            logger.handlers.clear()
            logger.propagate = True
        self.error_log.setLevel(logging.getLogger().level)

    def access(self, *args: object, **kwargs: object) -> None:
        return None


class GatewayServer(BaseApplication):
    def __init__(self, process: GatewayProcess) -> None:
        self.process = process
        self.drain = DrainFlag()
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_settings(self.process).items():
            self.cfg.set(key, value)

    def load(self) -> object:
        """Called in each gunicorn worker after fork: telemetry, pools and probes live here."""
        ctx = self.process.ctx
        self.telemetry = Telemetry.start(ctx.config.observability, ctx.config.project.name,
                                         "gateway", str(ctx.node_id))
        deps = GatewayDeps.build(ctx.config, ctx.database_url, ctx.app, self.telemetry,
                                 self.drain, f"gateway {str(ctx.node_id)[:8]} pid {os.getpid()}",
                                 ctx.node_id, direct_url=ctx.direct_url)
        app = create_app(deps)
        # What the worker has built so far lives as long as it does: out of the cyclic GC's
        # sight, every full collection has that much less to scan (thousands of open streams
        # make full collections frequent and long)
        gc.freeze()
        return app


def gunicorn_settings(process: GatewayProcess) -> dict[str, object]:
    config = process.ctx.config
    gateway = config.gateway
    return {
        "bind": [f"0.0.0.0:{gateway.port}"],
        "workers": gateway.workers,
        "threads": gateway.threads,
        "worker_class": GatewayWorker,
        "worker_connections": 1000,
        "timeout": 30,
        "graceful_timeout": max(1, int(config.node.drain_timeout_secs)),
        "keepalive": gateway.keepalive_secs,
        "backlog": 2048,
        "max_requests": 0,
        "max_requests_jitter": 0,
        "preload_app": False,
        "reuse_port": False,
        "sendfile": False,
        "chdir": str(config.root),
        "daemon": False,
        "raw_env": [],
        "pidfile": None,
        "umask": 0,
        "user": os.geteuid(),
        "group": os.getegid(),
        "forwarded_allow_ips": "127.0.0.1,::1",
        "proxy_allow_ips": "127.0.0.1,::1",
        "proxy_protocol": "off",
        "accesslog": None,
        "errorlog": "-",
        "loglevel": config.observability.log_level,
        "logger_class": GatewayLogger,
        "capture_output": False,
        "statsd_host": None,
        "proc_name": "forge-node: gateway",
        "control_socket_disable": True,
        "post_fork": _after_worker_fork(process),
        "worker_exit": _flush_telemetry,
    }


def _flush_telemetry(arbiter: Arbiter, worker: Worker) -> None:
    """A gunicorn worker exits: export what its telemetry still holds."""
    telemetry = getattr(worker.app, "telemetry", None)
    if telemetry is not None:
        telemetry.shutdown()


def _after_worker_fork(process: GatewayProcess):
    def post_fork(arbiter: Arbiter, worker: Worker) -> None:
        """A gunicorn worker reports to its master, not to the supervisor: drop the pipe and
        the master's wakeup pipe. It ends with its master (uvicorn's worker never checks its
        parent)."""
        os.close(process.ctx.report_fd)
        signal.set_wakeup_fd(-1)
        process.waker.close()
        setproctitle.setproctitle("forge-node: gateway worker")
        end_with_parent(arbiter.pid)

    return post_fork
