"""Middleware, in the order falcon runs it: the request's ids and telemetry, then CORS.

`RequestMiddleware` is the one place where a request becomes observable: its request id,
its `http.request` span (joining an inbound `traceparent`), the x-request-id / x-trace-id /
x-span-id headers, the request metrics and the access log line. `quiet_routes` get ids and
headers but no span, no metric and no log line.
"""

from __future__ import annotations

import logging
import time

import falcon
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode

from ..observability.logs import REQUEST_ID
from ..observability.otel import Telemetry, unrecorded_span
from . import correlation

access_log = logging.getLogger("forge_node.access")

EXPOSED_HEADERS = "x-request-id, x-trace-id, x-span-id"
PREFLIGHT_METHODS = "GET, POST, OPTIONS"
PREFLIGHT_HEADERS = "authorization, content-type, x-request-id, traceparent, tracestate"
PREFLIGHT_MAX_AGE_SECS = "600"


class RequestMiddleware:
    def __init__(self, telemetry: Telemetry, quiet_routes: tuple[str, ...]) -> None:
        self.telemetry = telemetry
        self.metrics = telemetry.metrics
        self.quiet_routes = frozenset(quiet_routes)

    async def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = req.context
        ctx.started = time.perf_counter()
        ctx.request_id = correlation.request_id_from(req.get_header("x-request-id"))
        ctx.quiet = req.path in self.quiet_routes
        traceparent = req.get_header("traceparent")
        parent = propagate.extract({"traceparent": traceparent,
                                    "tracestate": req.get_header("tracestate") or ""}) \
            if traceparent else None
        if ctx.quiet or not self.telemetry.tracing:  # only its ids: for headers and logs
            span = unrecorded_span(trace.get_current_span(parent).get_span_context())
        else:
            span = self.telemetry.start_span(
                "http.request", parent=parent, kind=SpanKind.SERVER,
                attributes={"http.request.method": req.method, "request.id": ctx.request_id})
        span_context = span.get_span_context()
        ctx.span = span
        ctx.trace_id = format(span_context.trace_id, "032x")
        ctx.span_id = format(span_context.span_id, "016x")
        ctx.tokens = (otel_context.attach(trace.set_span_in_context(span, parent)),
                      REQUEST_ID.set(ctx.request_id))

    async def process_response(self, req: falcon.Request, resp: falcon.Response,
                               resource: object, req_succeeded: bool) -> None:
        ctx = req.context
        resp.set_header("x-request-id", ctx.request_id)
        resp.set_header("x-trace-id", ctx.trace_id)
        resp.set_header("x-span-id", ctx.span_id)
        try:
            if not ctx.quiet:
                self.record(req, resp)
        finally:
            otel_context.detach(ctx.tokens[0])
            REQUEST_ID.reset(ctx.tokens[1])

    def record(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = req.context
        seconds = time.perf_counter() - ctx.started
        route = route_of(req)
        status = resp.status_code
        span = ctx.span
        if span.is_recording():
            span.set_attribute("http.route", route)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(StatusCode.ERROR)
            span.end()
        self.metrics.http_request(req.method, route, status, seconds)
        if not access_log.isEnabledFor(logging.INFO):
            return
        access_log.info("%s %s %s %.1fms", req.method, req.path, status, seconds * 1000, extra={
            "event": "http.request", "method": req.method, "route": route, "status": status,
            "duration_ms": round(seconds * 1000, 2), "request_id": ctx.request_id})


class CorsMiddleware:
    """Exact origins get credentials; `*` allows any origin without them; others get nothing."""

    def __init__(self, origins: tuple[str, ...]) -> None:
        self.any_origin = origins == ("*",)
        self.origins = frozenset(origins)

    async def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.preflight = preflight = (
            req.method == "OPTIONS"
            and req.get_header("access-control-request-method") is not None)
        if preflight:
            resp.status = falcon.HTTP_204
            resp.complete = True  # answered here, whatever the path

    async def process_response(self, req: falcon.Request, resp: falcon.Response,
                               resource: object, req_succeeded: bool) -> None:
        origin = req.get_header("origin")
        if not origin or not (self.any_origin or origin in self.origins):
            return
        if self.any_origin:
            resp.set_header("access-control-allow-origin", "*")
        else:
            resp.set_header("access-control-allow-origin", origin)
            resp.set_header("access-control-allow-credentials", "true")
            resp.append_header("vary", "Origin")
        resp.set_header("access-control-expose-headers", EXPOSED_HEADERS)
        if req.context.get("preflight"):  # unset when an earlier middleware raised
            resp.set_header("access-control-allow-methods", PREFLIGHT_METHODS)
            resp.set_header("access-control-allow-headers",
                            req.get_header("access-control-request-headers") or PREFLIGHT_HEADERS)
            resp.set_header("access-control-max-age", PREFLIGHT_MAX_AGE_SECS)


def route_of(req: falcon.Request) -> str:
    """The route template (never raw ids), or one value for everything unmatched."""
    if req.uri_template:
        return req.uri_template
    return "/_api/*" if req.path.startswith("/_api/") else "frontend"
