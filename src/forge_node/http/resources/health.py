"""Liveness and readiness.

The same resources serve the gateway's ASGI app (its `on_get_async` responders, routed with
suffix "async") and the monitor's small WSGI server (`on_get`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import falcon

from ... import __version__


class HealthResource:
    """Liveness: the process answers. No database call, so a slow database never fails it."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "healthy", "version": __version__}

    async def on_get_async(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.on_get(req, resp)


class ReadyResource:
    """Readiness: 200 when `is_ready()` says so, else 503; `database` says whether it answered.

    `check` returns (database answered, everything else this node needs is fine).
    """

    def __init__(self, check: Callable[[], tuple[bool, bool]]) -> None:
        self.check = check

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.answer(resp, *self.check())

    async def on_get_async(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The check's query runs on a thread: a slow database never stalls the loop."""
        self.answer(resp, *await asyncio.to_thread(self.check))

    @staticmethod
    def answer(resp: falcon.Response, database: bool, rest: bool) -> None:
        ready = database and rest
        resp.status = falcon.HTTP_200 if ready else falcon.HTTP_503
        resp.media = {"ready": ready, "database": database}
