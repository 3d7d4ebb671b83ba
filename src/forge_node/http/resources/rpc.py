"""POST /_api/rpc/{name}: call a query or mutation with `{"args": {...}}`."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import falcon
import falcon.asgi

from ...app import AppRegistry, FunctionSpec
from ...auth import InvalidToken, KeysUnavailable, TokenVerifier
from ...config import GatewayConfig
from ...encoding import JsonRejected, dumps, loads, to_jsonable
from ...errors import Error
from ..connections import BODY_ERROR, BODY_TIMEOUT
from ..errors import (
    FORBIDDEN,
    FUNCTION_ROLE_DISABLED,
    INTERNAL_ERROR,
    INVALID_ARGUMENT,
    NOT_FOUND,
    PAYLOAD_TOO_LARGE,
    REQUEST_TIMEOUT,
    SERVICE_UNAVAILABLE,
    UNAUTHORIZED,
    ApiError,
)
from ..functions import FunctionRunner, error_for_app_error

log = logging.getLogger("forge_node.http")


@dataclass(frozen=True)
class BodyLimits:
    """What a request body may be: its size and its JSON's depth. (How long it may take to
    arrive is the connection's to enforce: connections.py.)"""

    max_bytes: int
    max_depth: int

    @classmethod
    def of(cls, gateway: GatewayConfig) -> BodyLimits:
        return cls(gateway.max_body_bytes, gateway.max_json_depth)


class RpcResource:
    def __init__(self, registry: AppRegistry, runner: FunctionRunner | None,
                 verifier: TokenVerifier | None, limits: BodyLimits) -> None:
        self.registry = registry
        self.runner = runner
        self.verifier = verifier
        self.limits = limits

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                      name: str) -> None:
        if self.runner is None:
            raise ApiError(503, FUNCTION_ROLE_DISABLED,
                           "this node does not run functions (no function role)")
        claims = await authenticate(req, self.verifier)
        spec = self.registry.functions.get(name)
        if spec is None:
            raise ApiError(404, NOT_FOUND, f"no function named {name!r}")
        authorize(spec, claims)
        args = await read_args(req, self.limits)
        request_id = req.context.request_id
        try:
            result = await self.runner.run(spec, args, claims, request_id)
        except Error as exc:
            raise error_for_app_error(exc) from None
        resp.content_type = falcon.MEDIA_JSON
        resp.data = encode_answer(spec, result, request_id)


def encode_answer(spec: FunctionSpec, result: Any, request_id: str) -> bytes:
    """The success envelope as bytes, encoded here so that a result JSON cannot hold (NaN, a
    lone surrogate, nesting past the encoder's stack) is a logged 500 envelope rather than
    a broken body after the access log has recorded a 200."""
    try:
        return dumps({"success": True, "data": to_jsonable(result),
                      "request_id": request_id}).encode()
    except (ValueError, TypeError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        log.error("the result of %s cannot be encoded as JSON: %s", spec.name, exc,
                  extra={"event": "http.unencodable_result", "request_id": request_id})
        raise ApiError(500, INTERNAL_ERROR, f"the result of {spec.name} cannot be encoded as "
                                            "JSON; the server log has the details") from None

async def authenticate(req: falcon.asgi.Request,
                       verifier: TokenVerifier | None) -> dict[str, Any] | None:
    """The verified claims, None without a token; a bad token is 401 even when public."""
    header = req.get_header("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, UNAUTHORIZED, "the Authorization header must be 'Bearer <token>'")
    if verifier is None:
        raise ApiError(401, UNAUTHORIZED, "this app does not accept tokens ([auth] is not "
                                          "configured)")
    try:
        if verifier.jwks is None:
            return verifier.verify(token.strip())
        # RS256 may fetch the issuer's keys: over HTTP, so not on the event loop
        return await asyncio.to_thread(verifier.verify, token.strip())
    except InvalidToken as exc:
        raise ApiError(401, UNAUTHORIZED, f"invalid token: {exc}") from None
    except KeysUnavailable as exc:
        raise ApiError(503, SERVICE_UNAVAILABLE, str(exc)) from None


def authorize(spec: FunctionSpec, claims: dict[str, Any] | None) -> None:
    if spec.public:
        return
    if claims is None:
        raise ApiError(401, UNAUTHORIZED, f"{spec.name} needs a token")
    if spec.roles:
        held = claims.get("roles")
        held = [held] if isinstance(held, str) else held if isinstance(held, list) else []
        if not any(role in held for role in spec.roles):  # held may hold anything
            raise ApiError(403, FORBIDDEN,
                           f"{spec.name} needs one of the roles {', '.join(spec.roles)}")


async def read_json_object(req: falcon.asgi.Request, limits: BodyLimits,
                           shape: str) -> dict[str, Any]:
    """The body as a JSON object ({} when empty); 400 naming `shape` otherwise, 413 past
    `limits.max_bytes`, 408 when it did not all arrive within `[gateway] body_timeout_secs`."""
    raw = await read_body(req, limits.max_bytes)
    if not raw.strip():
        return {}
    try:
        body = loads(raw, limits.max_depth)
    except JsonRejected as exc:
        raise ApiError(400, INVALID_ARGUMENT, f"the body is {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, INVALID_ARGUMENT, f"the body must be a JSON object: {shape}")
    return body


async def read_body(req: falcon.asgi.Request, max_bytes: int) -> bytes:
    """The whole body; 400 when it breaks off (the client went, or its chunked encoding
    is malformed: see connections.py), 413 past `max_bytes`."""
    length = req.content_length
    if length is not None:  # the common case, inline: this runs on every call
        if length > max_bytes:
            raise _too_large(max_bytes)
        raw = await req.stream.read()  # bounded by the length: one read, no loop
        if len(raw) == length:
            return raw
        _check_body_timeout(req)
        raise ApiError(400, INVALID_ARGUMENT, f"the body ended after {len(raw)} of its "
                                              f"{length} bytes")
    raw = await read_chunked(req, max_bytes)
    _check_body_timeout(req)
    if BODY_ERROR in req.scope:
        raise ApiError(400, INVALID_ARGUMENT, req.scope[BODY_ERROR])
    return raw


def _check_body_timeout(req: falcon.asgi.Request) -> None:
    if BODY_TIMEOUT in req.scope:
        # the connection is closed after the answer: what else the client sends is unread
        raise ApiError(408, REQUEST_TIMEOUT, req.scope[BODY_TIMEOUT],
                       headers={"connection": "close"})


async def read_args(req: falcon.asgi.Request, limits: BodyLimits) -> dict[str, Any]:
    body = await read_json_object(req, limits, '{"args": {...}}')
    args = body.get("args")
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise ApiError(400, INVALID_ARGUMENT, "args must be a JSON object")
    return args


async def read_chunked(req: falcon.asgi.Request, max_bytes: int) -> bytes:
    """A body without a length, refused with 413 as soon as it grows past `max_bytes`."""
    chunks, size = [], 0
    async for chunk in req.stream:
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
    return b"".join(chunks)


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, PAYLOAD_TOO_LARGE, f"the body is larger than {max_bytes} bytes")
