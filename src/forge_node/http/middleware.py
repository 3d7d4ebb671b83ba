"""The gateway's one middleware: the request's ids and telemetry, and CORS.

`RequestMiddleware` is the one place where a request becomes observable: its request id,
its `http.request` span (joining an inbound `traceparent`), the x-request-id / x-trace-id /
x-span-id headers, the request metrics and the access log line. `quiet_routes` get ids and
headers but no span, no metric and no log line. CORS lives here too: falcon dispatches every
middleware on every request, and one costs less than two.
"""

from __future__ import annotations

import logging
import time

import falcon
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode

from ..observability.logs import REQUEST, RequestIds
from ..observability.otel import Telemetry, unrecorded_span
from . import correlation

access_log = logging.getLogger("forge_node.access")

EXPOSED_HEADERS = "x-request-id, x-trace-id, x-span-id"
PREFLIGHT_METHODS = "GET, POST, OPTIONS"
PREFLIGHT_HEADERS = "authorization, content-type, x-request-id, traceparent, tracestate"
PREFLIGHT_MAX_AGE_SECS = "600"


class RequestMiddleware:
    """Ids, span, headers, metrics and access log; CORS: exact origins get credentials, `*`
    allows any origin without them, others get nothing."""

    def __init__(self, telemetry: Telemetry, quiet_routes: tuple[str, ...],
                 cors_origins: tuple[str, ...]) -> None:
        self.telemetry = telemetry
        self.metrics = telemetry.metrics
        self.quiet_routes = frozenset(quiet_routes)
        self.any_origin = cors_origins == ("*",)
        self.origins = frozenset(cors_origins)
        self.cors = bool(cors_origins)

    async def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = req.context
        ctx.started = time.perf_counter()
        ctx.quiet = req.path in self.quiet_routes
        ctx.preflight = preflight = (
            req.method == "OPTIONS"
            and req.get_header("access-control-request-method") is not None)
        traceparent = req.get_header("traceparent")
        if traceparent is None and not self.telemetry.needs_span_context:
            ids = correlation.fresh_ids(req.get_header("x-request-id"))
            ctx.span = ctx.otel_token = None
        else:
            ids = self.start_span(req, traceparent)
        ctx.ids = ids
        ctx.request_id = ids.request_id
        ctx.token = REQUEST.set(ids)
        if preflight:
            resp.status = falcon.HTTP_204
            resp.complete = True  # answered here, whatever the path

    def start_span(self, req: falcon.Request, traceparent: str | None) -> RequestIds:
        """The request's span, OpenTelemetry's current one: recorded when traced (and not
        quiet), otherwise only its ids, in the inbound trace when there is one."""
        ctx = req.context
        parent = propagate.extract({"traceparent": traceparent,
                                    "tracestate": req.get_header("tracestate") or ""}) \
            if traceparent else None
        if ctx.quiet or not self.telemetry.tracing:
            span = unrecorded_span(trace.get_current_span(parent).get_span_context())
        else:
            span = self.telemetry.start_span(
                "http.request", parent=parent, kind=SpanKind.SERVER,
                attributes={"http.request.method": req.method})
        ctx.span = span
        ctx.otel_token = otel_context.attach(trace.set_span_in_context(span, parent))
        span_context = span.get_span_context()
        request_id = correlation.request_id_from(req.get_header("x-request-id"))
        if span.is_recording():
            span.set_attribute("request.id", request_id)
        return RequestIds(request_id, format(span_context.trace_id, "032x"),
                          format(span_context.span_id, "016x"), span_context.trace_flags.sampled)

    async def process_response(self, req: falcon.Request, resp: falcon.Response,
                               resource: object, req_succeeded: bool) -> None:
        ctx = req.context
        ids = ctx.ids
        resp.set_header("x-request-id", ids.request_id)
        resp.set_header("x-trace-id", ids.trace_id)
        resp.set_header("x-span-id", ids.span_id)
        resp.set_header("x-content-type-options", "nosniff")  # a body is what it says it is
        if self.cors:
            resp.append_header("vary", "Origin")  # the answer differs by origin: caches key on it
            self.allow_origin(req, resp)
        try:
            if not ctx.quiet:
                self.record(req, resp)
        finally:
            if ctx.otel_token is not None:
                otel_context.detach(ctx.otel_token)
            REQUEST.reset(ctx.token)

    def allow_origin(self, req: falcon.Request, resp: falcon.Response) -> None:
        origin = req.get_header("origin")
        if not origin or not (self.any_origin or origin in self.origins):
            return
        if self.any_origin:
            resp.set_header("access-control-allow-origin", "*")
        else:
            resp.set_header("access-control-allow-origin", origin)
            resp.set_header("access-control-allow-credentials", "true")
        resp.set_header("access-control-expose-headers", EXPOSED_HEADERS)
        if req.context.preflight:
            resp.set_header("access-control-allow-methods", PREFLIGHT_METHODS)
            resp.set_header("access-control-allow-headers",
                            req.get_header("access-control-request-headers") or PREFLIGHT_HEADERS)
            resp.set_header("access-control-max-age", PREFLIGHT_MAX_AGE_SECS)

    def record(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = req.context
        seconds = time.perf_counter() - ctx.started
        route = route_of(req)
        status = resp.status_code
        span = ctx.span
        if span is not None and span.is_recording():
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


def route_of(req: falcon.Request) -> str:
    """The route template (never raw ids), or one value for everything unmatched."""
    if req.uri_template:
        return req.uri_template
    return "/_api/*" if req.path.startswith("/_api/") else "frontend"
