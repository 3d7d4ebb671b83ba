"""`/_api/rpc` fuzzed over real HTTP against one real node: methods, paths, headers, bodies
(JSON of every shape, raw bytes, deep nesting, numbers JSON lacks, surrogates, sizes past the
limit), framings (a length, chunks, broken chunk sizes) and JWTs mangled in every part.

Every answer must come within the socket timeout, be a 2xx or a 4xx, and be the API's JSON
(the error envelope with its request id); the access log must record the status the client
got. A 5xx of any kind fails: nothing here is the server's fault."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.plugins.gateway import SECRET, hs256_token
from tests.plugins.nodes import NodeProcess, shared_node, wait_until
from tests.plugins.rawhttp import Answer, exchange, is_envelope

MODULE = '''
import forge_node as forge


@forge.query(public=True)
def echo(ctx, args):
    return args


@forge.mutation(roles=["editor"])
def edit(ctx, args):
    return {"by": ctx.auth["sub"], "args": args}
'''

MAX_BODY_BYTES = 4096  # small, so that sizes past it are cheap to send


@pytest.fixture(scope="module")
def node(pg_server, tmp_path_factory) -> Iterator[NodeProcess]:
    with shared_node(pg_server, tmp_path_factory.mktemp("fuzz"), MODULE,
                     node={"roles": ["gateway", "function"]}, auth={"jwt_secret": SECRET},
                     gateway={"max_body_bytes": MAX_BODY_BYTES, "quiet_routes": [],
                              "body_timeout_secs": 2}) as started:
        yield started


# -- bodies ----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
hostile_fragments = st.sampled_from([
    b"NaN", b"Infinity", b"-Infinity", b"1e999999", b"-1e400", b"9" * 5000, rb'"\ud800"',
    rb'"\udfff\ud800"', rb'"\ud83d\ude00"', b'"\xed\xa0\x80"', b'"\xff"', b"\xef\xbb\xbf{}",
    b"[" * 100_000, b'{"a":' * 5_000, b"[" * 64 + b"]" * 64, b"", b"null", b"[]", b'"args"',
    b"{", b'{"args": ', b"\x00", b" " * 10])


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    shape = draw(st.sampled_from(["args", "value", "fragment", "in-args", "bytes", "large",
                                  "deep", "deep", "escapes", "escapes"]))
    if shape == "deep":
        # within MAX_BODY_BYTES (past it the answer is 413), around the limit and the stack's
        levels = draw(st.one_of(st.sampled_from([62, 63, 64, 900, 1000, 2000]),
                                st.integers(1, 2000)))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b"{", b"}")]))
        return b'{"args": {"x": ' + opener * levels + b"1" + closer * levels + b"}}"
    if shape == "escapes":
        escapes = draw(st.lists(st.sampled_from(
            [rb"\ud800", rb"\udc00", rb"\ud83d\ude00", rb"\u0000", rb"\\", rb"\"", b"a"]),
            max_size=6))
        return b'{"args": {"s": "' + b"".join(escapes) + b'"}}'
    if shape == "args":
        return json.dumps({"args": draw(st.dictionaries(st.text(max_size=8), json_values,
                                                        max_size=4))}).encode()
    if shape == "value":
        return json.dumps(draw(json_values)).encode()
    if shape == "fragment":
        return draw(hostile_fragments)
    if shape == "in-args":
        return b'{"args": {"x": ' + draw(hostile_fragments) + b"}}"
    if shape == "bytes":
        return draw(st.binary(max_size=200))
    return b'{"args": {"x": "' + b"a" * draw(st.integers(MAX_BODY_BYTES - 20,
                                                         MAX_BODY_BYTES + 50)) + b'"}}'


# -- tokens ----------------------------------------------------------------------------------

def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@st.composite
def tokens(draw: st.DrawFn) -> str:
    """A valid token with one part replaced, parts added or dropped, or text."""
    parts = hs256_token({"roles": draw(st.sampled_from([["editor"], "editor", 1, None]))}
                        ).split(".")
    how = draw(st.sampled_from(["valid", "part-json", "part-bytes", "part-text", "count",
                                "text"]))
    if how == "valid":
        return ".".join(parts)
    if how == "text":
        return draw(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126),
                            max_size=60))
    if how == "count":
        return ".".join(parts[:draw(st.integers(0, 2))] + draw(st.lists(st.just("e30"),
                                                                       max_size=2)))
    index = draw(st.integers(0, 2))
    if how == "part-json":
        header = {"alg": draw(st.sampled_from(["HS256", "RS256", "none", "HS512", 1, None])),
                  "kid": draw(json_values), "typ": draw(json_values)}
        replaced = b64(json.dumps(draw(st.sampled_from([header, draw(json_values)]))).encode())
    elif how == "part-bytes":
        replaced = b64(draw(st.binary(max_size=60)))
    else:
        replaced = draw(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126),
                                max_size=40))
    parts[index] = replaced
    return ".".join(parts)


# -- requests --------------------------------------------------------------------------------

header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                        max_size=80)
paths = st.one_of(
    st.sampled_from(["/_api/rpc/echo", "/_api/rpc/edit", "/_api/rpc/echo/", "/_api/rpc/",
                     "/_api/rpc/nope", "/_api/rpc/%00", "/_api/rpc/%ED%A0%80",
                     "/_api/rpc/..%2F..%2Fetc", "/_api/../_api/rpc/echo", "/_api/rpc/echo?x=1",
                     "/_api", "/_api/", "/_api/health", "/_api/ready", "/_api/subscribe",
                     "/_api/events/ticket", "/_api/rpc/" + "a" * 3000]),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="?#"),
            max_size=40).map(lambda tail: "/_api/rpc/" + tail))


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, bool]:
    """(method, the request's bytes, whether it names its own request id). Most are POSTs
    to a public function, so that the body reaches the parser; the rest vary everything."""
    if draw(st.integers(0, 3)) > 0:
        method, path, headers = "POST", "/_api/rpc/echo", {"host": "fuzz"}
    else:
        method = draw(st.sampled_from(["POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS",
                                       "HEAD"]))
        path, headers = draw(paths), {"host": "fuzz", **draw(other_headers())}
    body = draw(bodies())
    framing = draw(st.sampled_from(["length", "length", "chunked", "bad-chunk", "none"]))
    if framing in ("length", "none"):
        payload = body if framing == "length" else b""
        headers["content-length"] = str(len(payload))
    else:
        headers["transfer-encoding"] = "chunked"
        pieces = chunks(body, draw(st.integers(1, 64)))
        if framing == "bad-chunk":  # a broken size line where the next chunk would start
            pieces[len(pieces) // 2:] = [draw(st.sampled_from(
                [b"zz\r\n", b"-2\r\n", b"\r\n\r\n", b"1;" + b"x" * 100 + b"\r\n"]))]
        payload = b"".join(pieces)
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return method, head.encode() + b"\r\n" + payload, "x-request-id" in headers


@st.composite
def other_headers(draw: st.DrawFn) -> dict[str, str]:
    headers = {}
    if draw(st.booleans()):
        headers["authorization"] = draw(st.sampled_from(["Bearer ", "Basic ", "bearer ", ""])
                                        ) + draw(tokens())
    for name in draw(st.lists(st.sampled_from(
            ["content-type", "x-request-id", "traceparent", "tracestate", "origin",
             "access-control-request-method", "accept", "expect"]), max_size=3, unique=True)):
        headers[name] = draw(header_values)
    return headers


def chunks(body: bytes, size: int) -> list[bytes]:
    """The body as chunks of `size` bytes, size lines included, and the last chunk."""
    pieces = [body[i:i + size] for i in range(0, len(body), size)]
    return [f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces] + [b"0\r\n\r\n"]


# -- the property ----------------------------------------------------------------------------

def check(answer: Answer, method: str) -> None:
    """A 2xx or 4xx, and JSON in the API's shapes (HEAD and 204 carry no body, nor does
    OPTIONS's 200, whose answer is its Allow header)."""
    assert 200 <= answer.status < 500, answer
    if method == "HEAD" or answer.status == 204 or (method, answer.body) == ("OPTIONS", b""):
        return
    if answer.status >= 400:
        assert is_envelope(answer), answer
    else:
        body = answer.json()
        assert body.get("success", True) is True, answer


def test_every_answer_is_a_json_envelope_that_the_access_log_agrees_with(node):
    answered: dict[str, int] = {}

    @settings(max_examples=200, deadline=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(requests())
    def every_answer(request: tuple[str, bytes, bool]) -> None:
        method, raw, own_request_id = request
        answer = exchange(node.app.port, raw, timeout=10, head=method == "HEAD")
        check(answer, method)
        # the app's answers (not the HTTP parser's), under ids of their own
        if "x-trace-id" in answer.headers and not own_request_id:
            answered[answer.headers["x-request-id"]] = answer.status

    every_answer()
    logged = wait_until(lambda: access_log(node, answered), timeout=10,
                        message="an access log line for every answer")
    assert logged == answered


def access_log(node: NodeProcess, answered: dict[str, int]) -> dict[str, int] | None:
    """request id -> status as logged, once every answered request has its line."""
    logged = {e["request_id"]: e["status"] for e in node.events()
              if e.get("event") == "http.request" and e.get("request_id") in answered}
    return logged if len(logged) == len(answered) else None
