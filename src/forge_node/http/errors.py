"""Every error the HTTP API answers is JSON with a stable code:

    {"success": false, "error": {"code": "NOT_FOUND", "message": "..."}, "request_id": "..."}

The codes are part of the API; clients branch on them. An unexpected exception is logged
with the request id and answered 500 INTERNAL_ERROR without its text.
"""

from __future__ import annotations

import logging

import falcon
import falcon.asgi

from ..encoding import dumps

log = logging.getLogger("forge_node.http")

NOT_FOUND = "NOT_FOUND"
INVALID_ARGUMENT = "INVALID_ARGUMENT"
UNAUTHORIZED = "UNAUTHORIZED"
FORBIDDEN = "FORBIDDEN"
PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
TIMEOUT = "TIMEOUT"
SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
FUNCTION_ROLE_DISABLED = "FUNCTION_ROLE_DISABLED"
TOO_MANY_SUBSCRIPTIONS = "TOO_MANY_SUBSCRIPTIONS"
SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
READ_ONLY = "READ_ONLY"
INTERNAL_ERROR = "INTERNAL_ERROR"

_CODE_OF_STATUS = {400: INVALID_ARGUMENT, 401: UNAUTHORIZED, 403: FORBIDDEN, 404: NOT_FOUND,
                   405: METHOD_NOT_ALLOWED, 408: REQUEST_TIMEOUT, 413: PAYLOAD_TOO_LARGE,
                   503: SERVICE_UNAVAILABLE, 504: TIMEOUT}


class ApiError(Exception):
    """Raised anywhere in a request to answer with this status and code."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def write_error(req: falcon.Request, resp: falcon.Response, status: int, code: str,
                message: str) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.text = dumps({"success": False, "error": {"code": code, "message": message},
                       "request_id": req.context.get("request_id")})


def bearer_challenge(message: str) -> str:
    """The WWW-Authenticate value of a 401: a Bearer token is wanted, and why this one (or
    none) was refused; the description keeps to the characters RFC 6750 allows."""
    description = "".join(c for c in message if c in _DESCRIPTION_CHARS)[:200]
    return f'Bearer error="invalid_token", error_description="{description}"'


_DESCRIPTION_CHARS = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}


def install(app: falcon.asgi.App) -> None:
    """Route every error falcon or a resource raises to one JSON shape."""

    async def handle_api_error(req, resp, exc: ApiError, params) -> None:
        answer_api_error(req, resp, exc, params)

    async def handle_http_error(req, resp, exc: falcon.HTTPError, params) -> None:
        answer_http_error(req, resp, exc, params)

    async def handle_unexpected(req, resp, exc: Exception, params) -> None:
        answer_unexpected(req, resp, exc, params)

    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(falcon.HTTPError, handle_http_error)
    app.add_error_handler(ApiError, handle_api_error)


def install_wsgi(app: falcon.App) -> None:
    """The same JSON shape for a WSGI app (the monitor's probes), whose handlers are plain
    functions (an ASGI app's must be coroutines)."""
    app.add_error_handler(Exception, answer_unexpected)
    app.add_error_handler(falcon.HTTPError, answer_http_error)
    app.add_error_handler(ApiError, answer_api_error)


def answer_api_error(req: falcon.Request, resp: falcon.Response, exc: ApiError,
                     params: dict) -> None:
    write_error(req, resp, exc.status, exc.code, exc.message)
    for name, value in (exc.headers or {}).items():
        resp.set_header(name, value)
    if exc.status == 401:  # RFC 6750: how to authenticate, and what was wrong
        resp.set_header("www-authenticate", bearer_challenge(exc.message))


def answer_http_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError,
                      params: dict) -> None:
    status = exc.status_code
    code = _CODE_OF_STATUS.get(status, INTERNAL_ERROR if status >= 500 else INVALID_ARGUMENT)
    message = exc.description or exc.title or code.lower()
    if isinstance(exc, falcon.HTTPMethodNotAllowed):
        message = f"{req.method} is not allowed on {req.path}"
    write_error(req, resp, status, code, message)
    for name, value in (exc.headers or {}).items():
        resp.set_header(name, value)


def answer_unexpected(req: falcon.Request, resp: falcon.Response, exc: Exception,
                      params: dict) -> None:
    log.error("request %s failed: %s", req.context.get("request_id"), exc, exc_info=exc,
              extra={"event": "http.internal_error",
                     "request_id": req.context.get("request_id")})
    write_error(req, resp, 500, INTERNAL_ERROR,
                "internal error; the server log has the details under this request id")
