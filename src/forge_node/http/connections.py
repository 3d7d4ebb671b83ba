"""The gateway's HTTP connections: uvicorn's httptools protocol with two limits of its own.

- A request's headers must all arrive within `header_timeout_secs` of its first byte (for a
  connection's first request, of the connection itself): a client that sends them slowly,
  or connects and sends nothing, is cut off, so slow clients cannot hold a worker's
  connections (slowloris). Between requests, uvicorn closes a connection idle for
  `keepalive_secs`. (uvicorn alone has no such deadline.)
- Past `max_connections` open connections in a worker, each request is marked in its ASGI
  scope (OVER_LIMIT); the app answers it 503 SERVICE_UNAVAILABLE with `Connection: close`,
  except health and readiness, so the worker sheds connections instead of slowing every one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

OVER_LIMIT = "forge.over_connection_limit"


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
        self.scope[OVER_LIMIT] = len(self.connections) > self.max_connections  # type: ignore

    def on_headers_complete(self) -> None:
        self.headers_arrived()
        super().on_headers_complete()

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
