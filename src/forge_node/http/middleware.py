"""Middleware, in the order falcon runs it: correlation ids, CORS, access log."""

from __future__ import annotations

import logging
import time

import falcon

from . import correlation

access_log = logging.getLogger("forge_node.access")

EXPOSED_HEADERS = "x-request-id, x-trace-id, x-span-id"
PREFLIGHT_METHODS = "GET, POST, OPTIONS"
PREFLIGHT_HEADERS = "authorization, content-type, x-request-id, traceparent, tracestate"
PREFLIGHT_MAX_AGE_SECS = "600"


class CorrelationMiddleware:
    """Gives every request its ids and every response the headers that carry them."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = req.context
        ctx.started = time.perf_counter()
        ctx.request_id = correlation.request_id_from(req.get_header("x-request-id"))
        parent = correlation.parse_traceparent(req.get_header("traceparent"))
        ctx.trace_parent = parent
        ctx.trace_id = parent.trace_id if parent else correlation.new_trace_id()
        ctx.span_id = correlation.new_span_id()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        ctx = req.context
        resp.set_header("x-request-id", ctx.request_id)
        resp.set_header("x-trace-id", ctx.trace_id)
        resp.set_header("x-span-id", ctx.span_id)


class CorsMiddleware:
    """Exact origins get credentials; `*` allows any origin without them; others get nothing."""

    def __init__(self, origins: tuple[str, ...]) -> None:
        self.any_origin = origins == ("*",)
        self.origins = frozenset(origins)

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        preflight = (req.method == "OPTIONS"
                     and req.get_header("access-control-request-method") is not None)
        if preflight:
            resp.status = falcon.HTTP_204
            resp.complete = True  # answered here, whatever the path

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
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
        if req.method == "OPTIONS" and req.get_header("access-control-request-method"):
            resp.set_header("access-control-allow-methods", PREFLIGHT_METHODS)
            resp.set_header("access-control-allow-headers",
                            req.get_header("access-control-request-headers") or PREFLIGHT_HEADERS)
            resp.set_header("access-control-max-age", PREFLIGHT_MAX_AGE_SECS)


class AccessLogMiddleware:
    """One line per request, except for `quiet_routes` (probes would drown everything)."""

    def __init__(self, quiet_routes: tuple[str, ...]) -> None:
        self.quiet_routes = frozenset(quiet_routes)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        if req.path in self.quiet_routes:
            return
        ctx = req.context
        duration_ms = (time.perf_counter() - ctx.started) * 1000
        status = resp.status_code if isinstance(resp.status_code, int) else resp.status
        access_log.info("%s %s %s %.1fms", req.method, req.path, status, duration_ms, extra={
            "event": "http.request", "method": req.method, "route": route_of(req),
            "status": status, "duration_ms": round(duration_ms, 2),
            "request_id": ctx.request_id, "trace_id": ctx.trace_id})


def route_of(req: falcon.Request) -> str:
    """The route template (never raw ids), or one value for everything unmatched."""
    if req.uri_template:
        return req.uri_template
    return "/_api/*" if req.path.startswith("/_api/") else "frontend"
