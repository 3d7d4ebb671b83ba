"""Input anyone can send, over real HTTP to a real node: each gets a 4xx in the API's JSON
envelope (and a result JSON cannot hold, a logged 500 envelope), never a 500 from a crash,
an empty body or a hang."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.plugins.gateway import SECRET, JwksServer, hs256_token
from tests.plugins.nodes import NodeProcess, shared_node, wait_until
from tests.plugins.rawhttp import (
    Answer,
    chunk,
    chunked_post,
    exchange,
    is_envelope,
    post,
)

MODULE = '''
import forge_node as forge


@forge.query(public=True)
def echo(ctx, args):
    return args


@forge.query(public=True)
def nested(ctx, args):
    value = []
    for _ in range(args["levels"]):
        value = [value]
    return value


@forge.query(public=True)
def not_a_number(ctx, args):
    return {"ratio": float("nan")}


@forge.query
def whoami(ctx, args):
    return ctx.auth["sub"]
'''

BODY_TIMEOUT_SECS = 1


@pytest.fixture(scope="module")
def node(pg_server, tmp_path_factory) -> Iterator[NodeProcess]:
    with shared_node(pg_server, tmp_path_factory.mktemp("hostile"), MODULE,
                     node={"roles": ["gateway", "function"]}, auth={"jwt_secret": SECRET},
                     gateway={"body_timeout_secs": BODY_TIMEOUT_SECS}) as started:
        yield started


def call(node: NodeProcess, body: bytes, name: str = "echo", **headers: str) -> Answer:
    return exchange(node.app.port, post(f"/_api/rpc/{name}", body, headers))


def error_code(answer: Answer) -> tuple[int, str]:
    assert is_envelope(answer), answer
    return answer.status, answer.json()["error"]["code"]


def access_log_status(node: NodeProcess, request_id: str) -> int:
    """The status the access log recorded for the request (it is written after the answer)."""
    line = wait_until(lambda: [e for e in node.events() if e.get("event") == "http.request"
                               and e.get("request_id") == request_id],
                      message=f"the access log line of {request_id}")
    return line[0]["status"]


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"args":' * 5_000 + b"{}" + b"}" * 5_000,
                                  b'{"args": {"a": ' + b"[" * 65 + b"]" * 65 + b"}}"],
                         ids=["100000-arrays", "5000-objects", "65-levels"])
def test_a_body_nested_too_deep_is_a_400(node, body):
    answer = call(node, body)
    assert error_code(answer) == (400, "INVALID_ARGUMENT")
    assert "nested deeper than 64 levels" in answer.json()["error"]["message"]


def test_a_body_nested_as_deep_as_allowed_is_answered(node):
    levels = b'{"args": {"a": ' + b"[" * 62 + b"]" * 62 + b"}}"  # 64 with args and the body
    assert call(node, levels).status == 200


@pytest.mark.parametrize("number", [b"1e999999", b"1e999", b"-1e400", b"NaN", b"Infinity",
                                    b"-Infinity"])
def test_numbers_json_does_not_have_are_refused(node, number):
    answer = call(node, b'{"args": {"x": ' + number + b"}}")
    assert error_code(answer) == (400, "INVALID_ARGUMENT")


def test_a_lone_surrogate_is_refused_and_the_access_log_agrees(node):
    for text in (rb'"\ud800"', rb'"\udc00 after"', rb'"\ud83d"'):
        answer = call(node, b'{"args": {"s": ' + text + b"}}")
        assert error_code(answer) == (400, "INVALID_ARGUMENT")
        assert access_log_status(node, answer.headers["x-request-id"]) == 400
    paired = call(node, rb'{"args": {"s": "\ud83d\ude00"}}')  # an escaped pair is one emoji
    assert (paired.status, paired.json()["data"]) == (200, {"s": "\U0001f600"})


@pytest.mark.parametrize("levels", [900, 5000])
def test_a_result_nested_deeper_than_the_encoder_goes_is_a_logged_500(node, levels):
    answer = call(node, b'{"args": {"levels": %d}}' % levels, name="nested")
    assert error_code(answer) == (500, "INTERNAL_ERROR")
    request_id = answer.headers["x-request-id"]
    assert access_log_status(node, request_id) == 500
    assert [e for e in node.events() if e.get("event") == "http.unencodable_result"
            and e.get("request_id") == request_id]


def test_a_result_holding_nan_is_a_500_never_bare_nan(node):
    answer = call(node, b"{}", name="not_a_number")
    assert error_code(answer) == (500, "INTERNAL_ERROR")
    assert b"NaN" not in answer.body


@pytest.mark.parametrize("size_line", [b"zz\r\n", b"-2\r\n", b"1x\r\n"])
def test_a_malformed_chunk_size_is_a_400(node, size_line):
    request = chunked_post("/_api/rpc/echo", [chunk(b'{"args": '), size_line + b"{}}\r\n"])
    answer = exchange(node.app.port, request)
    assert error_code(answer) == (400, "INVALID_ARGUMENT")
    assert "chunked encoding" in answer.json()["error"]["message"]
    assert access_log_status(node, answer.headers["x-request-id"]) == 400


def test_a_request_that_is_not_http_gets_the_envelope(node):
    for garbage in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nbad header line\r\n\r\n",
                    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"):  # a TLS hello
        assert error_code(exchange(node.app.port, garbage)) == (400, "INVALID_ARGUMENT")


def test_a_body_shorter_than_its_length_is_a_408_after_the_body_timeout(node):
    request = post("/_api/rpc/echo", b'{"args": {}}', {"content-length": "100"})
    answer = exchange(node.app.port, request, timeout=BODY_TIMEOUT_SECS + 5)
    assert error_code(answer) == (408, "REQUEST_TIMEOUT")
    assert BODY_TIMEOUT_SECS <= answer.seconds < BODY_TIMEOUT_SECS + 2
    assert answer.headers["connection"] == "close"


def test_a_body_the_client_stops_sending_is_a_408_while_others_are_answered(node):
    started = time.monotonic()
    stalled = chunked_post("/_api/rpc/echo", [chunk(b'{"args": ')])[:-5]  # no last chunk
    answer = exchange(node.app.port, stalled, timeout=BODY_TIMEOUT_SECS + 5)
    assert error_code(answer) == (408, "REQUEST_TIMEOUT")
    assert time.monotonic() - started < BODY_TIMEOUT_SECS + 2


# -- RS256: a node of its own, with keys served by the test --------------------------------


@pytest.fixture(scope="module")
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def rs_node(pg_server, tmp_path_factory, jwks_server) -> Iterator[NodeProcess]:
    folder: Path = tmp_path_factory.mktemp("hostile-rs")
    with shared_node(pg_server, folder, MODULE, node={"roles": ["gateway", "function"]},
                     auth={"jwt_algorithm": "RS256", "jwks_url": jwks_server.url}) as started:
        yield started


def with_header(token: str, **fields: object) -> str:
    """The token with its header fields changed (and its signature no longer matching)."""
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    encoded = base64.urlsafe_b64encode(json.dumps({**header, **fields}).encode()).rstrip(b"=")
    return ".".join([encoded.decode(), *token.split(".")[1:]])


@pytest.mark.parametrize("kid", [["k1"], {"id": "k1"}, 1, [[["k1"]]]])
def test_an_rs256_token_whose_kid_is_not_a_string_is_401(rs_node, jwks_server, kid):
    good = jwks_server.token(jwks_server.keys[0])
    assert call(rs_node, b"{}", "whoami", authorization=f"Bearer {good}").status == 200
    bad = with_header(good, kid=kid)
    answer = call(rs_node, b"{}", "whoami", authorization=f"Bearer {bad}")
    assert error_code(answer) == (401, "UNAUTHORIZED")


def test_a_token_header_nested_deep_is_401(node):
    header = base64.urlsafe_b64encode(b"[" * 50_000).rstrip(b"=").decode()
    rest = hs256_token().split(".", 1)[1]
    answer = call(node, b"{}", "whoami", authorization=f"Bearer {header}.{rest}")
    assert error_code(answer) == (401, "UNAUTHORIZED")
