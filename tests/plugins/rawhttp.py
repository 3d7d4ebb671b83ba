"""HTTP/1.1 spoken byte by byte, for tests that send what no client library would: broken
chunk sizes, short bodies, bad request lines. Every read has a timeout, so a server that
hangs fails the test instead of stalling it."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes
    seconds: float  # from the first byte sent to the whole answer read

    def json(self) -> Any:
        return json.loads(self.body)


def exchange(port: int, request: bytes, timeout: float = 10, head: bool = False) -> Answer:
    """Send `request` on a new connection and read one answer (without a body when `head`:
    the answer to a HEAD request); TimeoutError if none comes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        started = time.monotonic()
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading it all: read the answer
        return read_answer(sock, started, timeout, head)


def read_answer(sock: socket.socket, started: float, timeout: float,
                head: bool = False) -> Answer:
    """One answer from `sock`, which must be complete within `timeout` of `started`; interim
    answers (100 Continue) are skipped."""
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            data += _recv(sock, started, timeout)
        top, _, body = data.partition(b"\r\n\r\n")
        if not top.startswith(b"HTTP/1.1 1"):
            break
        data = body
    status_line, *lines = top.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head else int(headers.get("content-length", "0"))
    while len(body) < length:
        body += _recv(sock, started, timeout)
    return Answer(int(status_line.split()[1]), headers, body[:length],
                  time.monotonic() - started)


def _recv(sock: socket.socket, started: float, timeout: float) -> bytes:
    remaining = timeout - (time.monotonic() - started)
    if remaining <= 0:
        raise TimeoutError(f"no complete answer within {timeout} s")
    sock.settimeout(remaining)
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("the server closed the connection before answering")
    return chunk


def post(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """A POST with a Content-Length that matches its body."""
    fields = {"host": "test", "content-type": "application/json",
              "content-length": str(len(body)), **(headers or {})}
    lines = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    return f"POST {path} HTTP/1.1\r\n{lines}\r\n".encode() + body


def chunked_post(path: str, chunks: list[bytes]) -> bytes:
    """A POST with `Transfer-Encoding: chunked`, each item sent as one raw chunk (size line
    included), then the terminating chunk."""
    head = (f"POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
            f"transfer-encoding: chunked\r\n\r\n").encode()
    return head + b"".join(chunks) + b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def is_envelope(answer: Answer) -> bool:
    """Whether an error answer is the API's JSON envelope, carrying its request id."""
    body = answer.json()
    return (answer.headers.get("content-type", "").startswith("application/json")
            and body["success"] is False
            and set(body["error"]) == {"code", "message"}
            and body["request_id"] == answer.headers["x-request-id"])
