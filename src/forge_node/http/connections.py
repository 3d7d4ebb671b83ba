"""The gateway's HTTP connections: uvicorn's httptools protocol with two limits of its own.

- A request's headers must all arrive within `header_timeout_secs` of its first byte (for a
  connection's first request, of the connection itself): a client that sends them slowly,
  or connects and sends nothing, is cut off, so slow clients cannot hold a worker's
  connections (slowloris). Between requests, uvicorn closes a connection idle for
  `keepalive_secs`. (uvicorn alone has no such deadline.)
- Past `max_connections` open connections in a worker, a request is answered here, before
  the app: 503 SERVICE_UNAVAILABLE in the API's JSON envelope, with `Connection: close`, so
  the worker sheds connections instead of slowing every one. Health and readiness still
  reach the app, so probes see the truth. Requests under the limit pay one len().
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..encoding import dumps
from .correlation import new_request_id
from .errors import SERVICE_UNAVAILABLE

log = logging.getLogger(__name__)

PROBES = frozenset({b"/_api/health", b"/_api/ready"})
SHED_LOG_INTERVAL_SECS = 60.0
_last_shed_log = float("-inf")


class GatewayHttpProtocol(HttpToolsProtocol):
    header_timeout_secs: float = 10.0
    max_connections: int = 10_000

    @classmethod
    def with_limits(cls, header_timeout_secs: float,
                    max_connections: int) -> type[GatewayHttpProtocol]:
        """The protocol class to give uvicorn (it builds one protocol per connection)."""
        return type(cls.__name__, (cls,), {"header_timeout_secs": header_timeout_secs,
                                           "max_connections": max_connections})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.headers_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.await_headers()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.headers_deadline is None:
            self.await_headers()

    def on_headers_complete(self) -> None:
        self.headers_arrived()
        if len(self.connections) <= self.max_connections or self.probed():
            super().on_headers_complete()
            return
        app, self.app = self.app, shed_load  # uvicorn runs self.app for this request
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def probed(self) -> bool:
        return httptools.parse_url(self.url).path.rstrip(b"/") in PROBES

    def connection_lost(self, exc: Exception | None) -> None:
        self.headers_arrived()
        super().connection_lost(exc)

    def await_headers(self) -> None:
        self.headers_deadline = self.loop.call_later(self.header_timeout_secs,
                                                     self.headers_too_slow)

    def headers_arrived(self) -> None:
        if self.headers_deadline is not None:
            self.headers_deadline.cancel()
            self.headers_deadline = None

    def headers_too_slow(self) -> None:
        self.headers_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


async def shed_load(scope: dict, receive: Any, send: Any) -> None:
    """The answer past max_connections: the API's 503, and the connection closed after it."""
    global _last_shed_log
    if time.monotonic() - _last_shed_log >= SHED_LOG_INTERVAL_SECS:
        _last_shed_log = time.monotonic()
        log.warning("shedding requests: this gateway worker holds more than its "
                    "[gateway] max_connections connections",
                    extra={"event": "gateway.connections_shed"})
    request_id = new_request_id()
    body = dumps({"success": False, "error": {
        "code": SERVICE_UNAVAILABLE,
        "message": "this gateway worker is at its connection limit; try again"},
        "request_id": request_id}).encode()
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"), (b"x-request-id", request_id.encode())]})
    await send({"type": "http.response.body", "body": body})
