"""The gateway's HTTP connections: uvicorn's httptools protocol with limits of its own.

- A request's headers must all arrive within `header_timeout_secs` of its first byte (for a
  connection's first request, of the connection itself): a client that sends them slowly,
  or connects and sends nothing, is cut off, so slow clients cannot hold a worker's
  connections (slowloris). Between requests, uvicorn closes a connection idle for
  `keepalive_secs`. (uvicorn alone has no such deadline.)
- Its body must then arrive within `body_timeout_secs` of the headers: one that does not is
  ended there, its scope says so under BODY_TIMEOUT, and the app answers 408 (the connection
  closes after it).
- The deadlines are checked by one timer per worker, which runs only while some connection
  waits, so a late client is cut at most a second (or a quarter of the timeout) past its
  deadline, and a request pays no timer of its own.
- Past `max_connections` open connections in a worker, a request is answered here, before
  the app: 503 SERVICE_UNAVAILABLE in the API's JSON envelope, with `Connection: close`, so
  the worker sheds connections instead of slowing every one. Health and readiness still
  reach the app, so probes see the truth. Requests under the limit pay one len().

Bytes that are not HTTP get the API's 400 envelope too (uvicorn answers them in plain text).
When they break a request's body (a chunk size of `zz`), the request already belongs to the
app: its body ends there, its scope says why under BODY_ERROR, and the app answers 400 on
the usual path (access log, metrics); the connection closes after that answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..encoding import dumps
from .correlation import new_request_id
from .errors import INVALID_ARGUMENT, SERVICE_UNAVAILABLE

log = logging.getLogger(__name__)

PROBES = frozenset({b"/_api/health", b"/_api/ready"})
BODY_ERROR = "forge.body_error"  # in a request's scope: why its body broke off
BODY_TIMEOUT = "forge.body_timeout"  # in a request's scope: its body came too slowly
SHED_LOG_INTERVAL_SECS = 60.0
_last_shed_log = float("-inf")


class Deadlines:
    """The connections of one worker that wait for a request's headers or its body, and
    their deadlines.

    One timer checks them all, and only while some connection waits: a timer armed and
    cancelled on every request costs about 2 us of it (`asyncio.timeout` about 6), and the
    headers and body of nearly every request arrive in the packet that starts it.
    """

    def __init__(self, header_timeout_secs: float, body_timeout_secs: float) -> None:
        self.header_timeout_secs = header_timeout_secs
        self.body_timeout_secs = body_timeout_secs
        self.interval_secs = min(1.0, header_timeout_secs / 4, body_timeout_secs / 4)
        self.headers: dict[GatewayHttpProtocol, float] = {}
        self.bodies: dict[GatewayHttpProtocol, float] = {}
        self.timer: asyncio.TimerHandle | None = None

    def start_headers(self, protocol: GatewayHttpProtocol) -> None:
        self.headers[protocol] = protocol.loop.time() + self.header_timeout_secs
        if self.timer is None:
            self.timer = protocol.loop.call_later(self.interval_secs, self.check, protocol.loop)

    def start_body(self, protocol: GatewayHttpProtocol) -> None:
        """The headers came: now the body (its end, on_message_complete, stops it)."""
        self.headers.pop(protocol, None)
        self.bodies[protocol] = protocol.loop.time() + self.body_timeout_secs

    def stop(self, protocol: GatewayHttpProtocol) -> None:
        self.headers.pop(protocol, None)
        self.bodies.pop(protocol, None)

    def check(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for protocol in [p for p, deadline in self.headers.items() if deadline <= now]:
            del self.headers[protocol]
            protocol.headers_too_slow()
        for protocol in [p for p, deadline in self.bodies.items() if deadline <= now]:
            del self.bodies[protocol]
            protocol.body_too_slow()
        self.timer = loop.call_later(self.interval_secs, self.check, loop) \
            if self.headers or self.bodies else None


class GatewayHttpProtocol(HttpToolsProtocol):
    """Each request's scope holds its connection as `forge.connection`: a live stream sets
    `on_lost` to hear of the client's going, and aborts the transport of a client too slow
    to read its events."""

    max_connections: int = 10_000
    deadlines: Deadlines
    on_lost: Callable[[], None] | None = None

    @classmethod
    def with_limits(cls, header_timeout_secs: float, body_timeout_secs: float,
                    max_connections: int) -> type[GatewayHttpProtocol]:
        """The protocol class to give uvicorn (it builds one protocol per connection); one
        per worker, holding that worker's deadlines."""
        deadlines = Deadlines(header_timeout_secs, body_timeout_secs)
        return type(cls.__name__, (cls,), {"deadlines": deadlines,
                                           "max_connections": max_connections})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.deadlines.start_headers(self)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["forge.connection"] = self  # type: ignore[typeddict-unknown-key]
        if self not in self.deadlines.headers:  # a connection's first request: since connected
            self.deadlines.start_headers(self)

    def on_headers_complete(self) -> None:
        self.deadlines.start_body(self)
        if len(self.connections) <= self.max_connections or self.probed():
            super().on_headers_complete()
            return
        app, self.app = self.app, shed_load  # uvicorn runs self.app for this request
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        self.deadlines.stop(self)
        super().on_message_complete()

    def probed(self) -> bool:
        return httptools.parse_url(self.url).path.rstrip(b"/") in PROBES

    def connection_lost(self, exc: Exception | None) -> None:
        self.deadlines.stop(self)
        super().connection_lost(exc)
        if self.on_lost is not None:
            self.on_lost()

    def headers_too_slow(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def body_too_slow(self) -> None:
        """The body did not all come in time: the app's request ends its body here, and the
        app answers 408 (and the connection closes after it)."""
        cycle = self.cycle
        if cycle is None or not cycle.more_body:
            return
        cycle.scope[BODY_TIMEOUT] = f"the body did not arrive within " \
                                    f"{self.deadlines.body_timeout_secs:g} s"
        self.end_body(cycle)

    def send_400_response(self, msg: str) -> None:
        """The parser refused the bytes: uvicorn's hook for its plain-text 400."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.transport.write(raw_error_response(400, INVALID_ARGUMENT,
                                                    "the request is not valid HTTP/1.1"))
            self.transport.close()
        elif cycle.more_body:  # the app's request, its body broken: the app answers
            cycle.scope[BODY_ERROR] = "the body's chunked encoding is malformed"
            self.end_body(cycle)
        else:  # a pipelined request broke while this one is answered: close after it
            cycle.keep_alive = False


    @staticmethod
    def end_body(cycle: Any) -> None:
        """The app's request body ends here; the connection closes after its answer."""
        cycle.more_body = False
        cycle.keep_alive = False
        cycle.message_event.set()


async def shed_load(scope: dict, receive: Any, send: Any) -> None:
    """The answer past max_connections: the API's 503, and the connection closed after it."""
    global _last_shed_log
    if time.monotonic() - _last_shed_log >= SHED_LOG_INTERVAL_SECS:
        _last_shed_log = time.monotonic()
        log.warning("shedding requests: this gateway worker holds more than its "
                    "[gateway] max_connections connections",
                    extra={"event": "gateway.connections_shed"})
    headers, body = error_answer(SERVICE_UNAVAILABLE,
                                 "this gateway worker is at its connection limit; try again")
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def error_answer(code: str, message: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of an error answered outside the app, in the API's envelope; the
    connection is closed after it."""
    request_id = new_request_id()
    body = dumps({"success": False, "error": {"code": code, "message": message},
                  "request_id": request_id}).encode()
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"), (b"x-request-id", request_id.encode())], body


def raw_error_response(status: int, code: str, message: str) -> bytes:
    """An error answer as bytes on the wire, for when there is no request to answer."""
    headers, body = error_answer(code, message)
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode(),
             *(name + b": " + value for name, value in headers)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
