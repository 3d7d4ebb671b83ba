"""POST /_api/rpc/{name}: call a query or mutation with `{"args": {...}}`."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import falcon
import falcon.asgi

from ...app import AppRegistry, FunctionSpec
from ...auth import InvalidToken, KeysUnavailable, TokenVerifier
from ...encoding import dumps, to_jsonable
from ...errors import Error
from ..errors import (
    FORBIDDEN,
    FUNCTION_ROLE_DISABLED,
    INVALID_ARGUMENT,
    NOT_FOUND,
    PAYLOAD_TOO_LARGE,
    SERVICE_UNAVAILABLE,
    UNAUTHORIZED,
    ApiError,
)
from ..functions import FunctionRunner, error_for_app_error


class RpcResource:
    def __init__(self, registry: AppRegistry, runner: FunctionRunner | None,
                 verifier: TokenVerifier | None, max_body_bytes: int) -> None:
        self.registry = registry
        self.runner = runner
        self.verifier = verifier
        self.max_body_bytes = max_body_bytes

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
        args = await read_args(req, self.max_body_bytes)
        request_id = req.context.request_id
        try:
            result = await self.runner.run(spec, args, claims, request_id)
        except Error as exc:
            raise error_for_app_error(exc) from None
        resp.content_type = falcon.MEDIA_JSON
        resp.text = dumps({"success": True, "data": to_jsonable(result),
                           "request_id": request_id})

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


async def read_json_object(req: falcon.asgi.Request, max_bytes: int,
                           shape: str) -> dict[str, Any]:
    """The body as a JSON object ({} when empty); 400 naming `shape` otherwise, 413 past
    `max_bytes`."""
    length = req.content_length
    if length is not None:  # the common case, inline: this runs on every call
        if length > max_bytes:
            raise _too_large(max_bytes)
        raw = await req.stream.read()  # bounded by the length: one read, no loop
    else:
        raw = await read_chunked(req, max_bytes)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise ApiError(400, INVALID_ARGUMENT, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, INVALID_ARGUMENT, f"the body must be a JSON object: {shape}")
    return body


async def read_args(req: falcon.asgi.Request, max_bytes: int) -> dict[str, Any]:
    body = await read_json_object(req, max_bytes, '{"args": {...}}')
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
