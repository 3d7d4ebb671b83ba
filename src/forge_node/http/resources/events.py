"""Live updates over server-sent events (see http/livehub.py for how they travel).

    POST /_api/events/ticket   a one-use ticket for EventSource (needs a token)
    GET  /_api/events          the stream: `connected` first, then `result`, `error`, `job`
                               and `shutdown` events; a comment line when quiet
    POST /_api/subscribe       {"session_id", "id", "function", "args"}: a live query
    POST /_api/subscribe-job   {"session_id", "id", "job_id"}: a job's status and progress
    POST /_api/unsubscribe     {"session_id", "id"}
    GET  /_api/client.js       the browser client (static/client.js)

The subscribing requests may reach any worker of any node; the auth rules of /_api/rpc apply
to them, and they must carry the identity (the token's subject) that opened the session.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import falcon
import falcon.asgi

from ... import jobs, live
from ...app import AppRegistry
from ...auth import TokenVerifier
from ...encoding import dumps
from ..errors import (
    FORBIDDEN,
    FUNCTION_ROLE_DISABLED,
    INVALID_ARGUMENT,
    NOT_FOUND,
    SESSION_NOT_FOUND,
    TOO_MANY_SUBSCRIPTIONS,
    UNAUTHORIZED,
    ApiError,
)
from ..livehub import LiveHub, Session
from .rpc import BodyLimits, authenticate, authorize, read_json_object

MAX_ID_CHARS = 128


class LiveResource:
    def __init__(self, hub: LiveHub | None, registry: AppRegistry,
                 verifier: TokenVerifier | None, limits: BodyLimits) -> None:
        self.hub = hub
        self.registry = registry
        self.verifier = verifier
        self.limits = limits

    def live_hub(self) -> LiveHub:
        if self.hub is None:
            raise ApiError(503, FUNCTION_ROLE_DISABLED,
                           "this node does not run functions (no function role)")
        return self.hub

    async def read_request(self, req: falcon.asgi.Request, shape: str) -> tuple[dict, str, str]:
        """A subscribing request's body, with its session_id and (subscription) id."""
        body = await read_json_object(req, self.limits, shape)
        return body, text_field(body, "session_id"), text_field(body, "id")


class TicketResource(LiveResource):
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        hub = self.live_hub()
        claims = await authenticate(req, self.verifier)
        if claims is None:
            raise ApiError(401, UNAUTHORIZED, "a ticket needs a token: send "
                                              "'Authorization: Bearer <token>'")
        ttl = hub.settings.ticket_ttl_secs
        async with hub.runner.primary_connection() as conn:
            ticket = await live.create_ticket(conn, claims, ttl)
        answer(req, resp, {"ticket": ticket, "expires_in_secs": ttl})


class EventsResource(LiveResource):
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        hub = self.live_hub()
        ticket = req.get_param("ticket")
        if ticket is not None:
            claims = await self.claims_of_ticket(hub, ticket)
        else:
            claims = await authenticate(req, self.verifier)
        session = await hub.open(claims)
        connection = req.scope.get("forge.connection")
        if connection is not None:  # the real server's: cut when gone, or too slow to read
            session.connection = connection
            connection.on_lost = lambda: hub.close(session)
        resp.set_header("cache-control", "no-store")
        resp.set_header("x-accel-buffering", "no")  # proxies: pass each event on at once
        resp.sse = self.events(hub, session)

    @staticmethod
    async def claims_of_ticket(hub: LiveHub, ticket: str) -> dict[str, Any]:
        async with hub.runner.primary_connection() as conn:
            claims = await live.use_ticket(conn, ticket)
        if claims is None:
            raise ApiError(401, UNAUTHORIZED, "the ticket is unknown, used or expired; ask "
                                              "POST /_api/events/ticket for a new one")
        exp = claims.get("exp")
        if isinstance(exp, int | float) and exp <= time.time():
            raise ApiError(401, UNAUTHORIZED, "the token behind this ticket has expired")
        return claims

    @staticmethod
    async def events(hub: LiveHub, session: Session) -> AsyncIterator[Any]:
        try:
            async for event in session.stream():
                yield event
        finally:
            hub.close(session)


class SubscribeResource(LiveResource):
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        hub = self.live_hub()
        body, session_id, watch_id = await self.read_request(
            req, '{"session_id", "id", "function", "args"}')
        name = text_field(body, "function")
        args = body.get("args", {})
        if not isinstance(args, dict):
            raise ApiError(400, INVALID_ARGUMENT, "args must be a JSON object")
        claims = await authenticate(req, self.verifier)
        spec = self.registry.functions.get(name)
        if spec is None:
            raise ApiError(404, NOT_FOUND, f"no function named {name!r}")
        if spec.kind != "query":
            raise ApiError(400, INVALID_ARGUMENT, f"{name} is a {spec.kind}: only queries can "
                                                  "be subscribed to")
        if not spec.live:
            raise ApiError(400, INVALID_ARGUMENT, f"{name} is not live: declare the tables it "
                                                  'reads, @forge.query(live=["table"])')
        authorize(spec, claims)
        async with hub.runner.primary_connection() as conn:
            session = await owned_session(conn, session_id, watch_id, claims,
                                          hub.settings.max_per_session)
            await live.subscribe(conn, session, watch_id, claims, function=name, args=args)
        answer(req, resp, {"id": watch_id})


class SubscribeJobResource(LiveResource):
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        hub = self.live_hub()
        body, session_id, watch_id = await self.read_request(req, '{"session_id", "id", "job_id"}')
        job_id = body.get("job_id")
        if not isinstance(job_id, int) or isinstance(job_id, bool) or job_id < 1:
            raise ApiError(400, INVALID_ARGUMENT, "job_id must be a job's id: a positive integer")
        claims = await authenticate(req, self.verifier)
        async with hub.runner.primary_connection() as conn:
            session = await owned_session(conn, session_id, watch_id, claims,
                                          hub.settings.max_per_session)
            if job_id >= 2**63 or not await jobs.job_states(conn, [job_id]):
                raise ApiError(404, NOT_FOUND, f"no job {job_id}")
            await live.subscribe(conn, session, watch_id, claims, job_id=job_id)
        answer(req, resp, {"id": watch_id})


class UnsubscribeResource(LiveResource):
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        hub = self.live_hub()
        _, session_id, watch_id = await self.read_request(req, '{"session_id", "id"}')
        claims = await authenticate(req, self.verifier)
        async with hub.runner.primary_connection() as conn:
            session = await owned_session(conn, session_id, watch_id, claims, None)
            await live.unsubscribe(conn, session, watch_id)
        answer(req, resp, {"id": watch_id})


async def owned_session(conn: Any, session_id: str, watch_id: str, claims: dict | None,
                        limit: int | None) -> dict:
    """The session, when it exists and the caller is who opened it; 404, 403 or 429 if not."""
    session = await live.find_session(conn, session_id, watch_id)
    if session is None:
        raise ApiError(404, SESSION_NOT_FOUND, f"no live session {session_id!r}: open GET "
                                               "/_api/events and use the session_id of its "
                                               "connected event")
    subject = None if claims is None or claims.get("sub") is None else str(claims["sub"])
    if session["identity"] != subject:
        raise ApiError(403, FORBIDDEN, "this live session was opened by another identity")
    if limit is not None and session["watching"] >= limit:
        raise ApiError(429, TOO_MANY_SUBSCRIPTIONS, f"a live session holds at most {limit} "
                                                    "subscriptions ([gateway.subscriptions] "
                                                    "max_per_session)")
    return session


def text_field(body: dict, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_CHARS:
        raise ApiError(400, INVALID_ARGUMENT, f"{name} must be a string of 1 to {MAX_ID_CHARS} "
                                              "characters")
    return value


def answer(req: falcon.asgi.Request, resp: falcon.asgi.Response, data: dict) -> None:
    resp.content_type = falcon.MEDIA_JSON
    resp.text = dumps({"success": True, "data": data, "request_id": req.context.request_id})


class ClientScriptResource:
    """GET /_api/client.js: the dependency-free browser client of live updates (static/)."""

    PATH = Path(__file__).resolve().parent.parent / "static" / "client.js"

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = "text/javascript; charset=utf-8"
        resp.set_header("cache-control", "public, max-age=300")
        resp.data = self.PATH.read_bytes()
