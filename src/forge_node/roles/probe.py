"""Health and readiness for nodes without the gateway role.

Worker-only and scheduler-only machines need probes too. This small child serves only
`/_api/health` and `/_api/ready` on `[gateway] port`. Readiness reads the node's own row:
`active` means the database answers, every role is up and the node is not draining (the
supervisor writes each change of these at once). The supervisor stops the probe last, so
it answers 503 for the whole drain.
"""

from __future__ import annotations

import logging
import socket
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import falcon

from ..http.resources.health import DatabaseProbe, HealthResource, ReadyResource
from ..process import READY, RoleProcess

log = logging.getLogger(__name__)

CLIENT_TIMEOUT_SECS = 2


class ProbeProcess(RoleProcess):
    role = "probe"

    def boot(self) -> None:
        super().boot()
        self.row = DatabaseProbe(self.ctx.database_url, f"probe {str(self.ctx.node_id)[:8]}",
                                 "SELECT status FROM forge_nodes WHERE id = %s",
                                 (self.ctx.node_id,))
        app = falcon.App()
        app.add_route("/_api/health", HealthResource())
        app.add_route("/_api/ready", ReadyResource(self.readiness))
        self.server = make_server("0.0.0.0", self.ctx.config.gateway.port, app,
                                  server_class=_ProbeServer, handler_class=_QuietHandler)
        self.server.timeout = 0.5

    def readiness(self) -> tuple[bool, bool]:
        row = self.row.fetch()
        return row is not None, bool(row) and row[0] == "active"

    def run(self) -> None:
        self.reports.send(READY)
        while not self.stopping:
            self.tick()
            self.server.handle_request()
        self.server.server_close()


class _ProbeServer(WSGIServer):
    allow_reuse_address = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        super().server_bind()


class _QuietHandler(WSGIRequestHandler):
    timeout = CLIENT_TIMEOUT_SECS  # one slow client cannot hold the probe for long

    def log_message(self, format: str, *args: object) -> None:
        return None
