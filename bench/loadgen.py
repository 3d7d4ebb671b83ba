"""A small closed-loop HTTP/1.1 load generator, for machines without wrk.

    python bench/loadgen.py URL [--method POST --body '{"args": {}}'
                                 --header 'Content-Type: application/json']
                                [--connections 16] [--processes 2] [--duration 10] [--warmup 2]

Each of `--processes` processes holds its share of `--connections` keep-alive connections on
raw sockets and sends the next request on a connection as soon as its response is complete.
Requests started after the warm-up and answered before its end are timed; the result is one
JSON line on stdout: requests, seconds, requests_per_sec, p50_ms, p99_ms, errors and
error_kinds. Anything but a complete 2xx answer is an error (non-2xx status, a reset or
closed connection, no answer within --timeout), and the connection is opened again.
"""

from __future__ import annotations

import argparse
import array
import json
import math
import multiprocessing
import queue
import selectors
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

RETRY_PAUSE_SECS = 0.05


@dataclass(frozen=True)
class Plan:
    host: str
    port: int
    request: bytes
    connections: int
    warmup: float
    duration: float
    timeout: float
    measure_at: float = 0.0  # time.monotonic() (system-wide on Linux) once the start is set
    end_at: float = 0.0

    def starting_at(self, start: float) -> Plan:
        return replace(self, measure_at=start + self.warmup,
                       end_at=start + self.warmup + self.duration)


@dataclass
class Tally:
    latencies: array.array = field(default_factory=lambda: array.array("d"))
    errors: Counter = field(default_factory=Counter)

    def record(self, plan: Plan, sent_at: float, now: float, error: str | None) -> None:
        if sent_at < plan.measure_at or now > plan.end_at:
            return
        if error:
            self.errors[error] += 1
        else:
            self.latencies.append(now - sent_at)


class Connection:
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, plan: Plan, selector: selectors.BaseSelector, tally: Tally) -> None:
        self.plan = plan
        self.selector = selector
        self.tally = tally
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.sent_at = 0.0
        self.in_flight = False
        self.retry_at: float | None = None

    def send(self) -> None:
        self.retry_at = None
        self.sent_at = time.monotonic()
        self.in_flight = True
        try:
            if self.sock is None:
                self.sock = socket.create_connection((self.plan.host, self.plan.port), timeout=5)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.selector.register(self.sock, selectors.EVENT_READ, self)
            self.sock.sendall(self.plan.request)
        except OSError as exc:
            self.fail(time.monotonic(), type(exc).__name__)

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except OSError as exc:
            self.fail(time.monotonic(), type(exc).__name__)
            return
        if not data:
            self.fail(time.monotonic(), "connection closed")
            return
        self.buffer += data
        self.consume()

    def consume(self) -> None:
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        status, length, close = parse_head(self.buffer[:head_end])
        if length is None:
            self.fail(time.monotonic(), "no content-length")
            return
        if len(self.buffer) < head_end + 4 + length:
            return
        now = time.monotonic()
        self.in_flight = False
        self.buffer = self.buffer[head_end + 4 + length:]
        error = None if 200 <= status <= 299 else f"status {status}"
        self.tally.record(self.plan, self.sent_at, now, error)
        if close:
            self.close()
        if now < self.plan.end_at:
            self.send()

    def tick(self, now: float) -> None:
        """Give up on a late answer; open the connection again once a retry is due."""
        if self.in_flight and now - self.sent_at > self.plan.timeout:
            self.fail(now, "timeout")
        if self.retry_at is not None and now >= self.retry_at and now < self.plan.end_at:
            self.send()

    def fail(self, now: float, kind: str) -> None:
        if self.in_flight:
            self.tally.record(self.plan, self.sent_at, now, kind)
        self.in_flight = False
        self.close()
        self.retry_at = now + RETRY_PAUSE_SECS  # a refused connect must not spin

    def close(self) -> None:
        if self.sock is not None:
            self.selector.unregister(self.sock)
            self.sock.close()
            self.sock = None
        self.buffer = b""


def parse_head(head: bytes) -> tuple[int, int | None, bool]:
    """(status, content-length or None, whether the server closes the connection)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    length, close = None, parts[0] == b"HTTP/1.0"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"connection":
            close = value.strip().lower() == b"close"
    return status, length, close


def drive(plan: Plan) -> Tally:
    """Run this process's connections until plan.end_at."""
    selector = selectors.DefaultSelector()
    tally = Tally()
    connections = [Connection(plan, selector, tally) for _ in range(plan.connections)]
    for conn in connections:
        conn.send()
    while (now := time.monotonic()) < plan.end_at:
        for key, _ in selector.select(timeout=min(0.1, plan.end_at - now)):
            key.data.on_readable()
        now = time.monotonic()
        for conn in connections:
            conn.tick(now)
    for conn in connections:
        conn.close()
    selector.close()
    return tally


def _child(plan: Plan, ready: multiprocessing.Queue, go: multiprocessing.Event,
           start: multiprocessing.Value, results: multiprocessing.Queue) -> None:
    """Started and imported, wait for the common start time, so no process starts late."""
    ready.put(True)
    go.wait()
    tally = drive(plan.starting_at(start.value))
    results.put((tally.latencies.tobytes(), dict(tally.errors)))


def build_request(url: str, method: str, body: str, headers: list[str]) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    lines = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}", *headers]
    payload = body.encode()
    if payload or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(payload)}")
    return parts.hostname, parts.port or 80, ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest rank: the smallest sample with at least pct% of the samples at or below it."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def run(url: str, *, method: str = "GET", body: str = "", headers: tuple[str, ...] = (),
        connections: int = 16, processes: int = 2, duration: float = 10, warmup: float = 2,
        timeout: float = 5) -> dict:
    host, port, request = build_request(url, method, body, list(headers))
    processes = max(1, min(processes, connections))
    shares = [connections // processes + (i < connections % processes) for i in range(processes)]
    ctx = multiprocessing.get_context("spawn")
    ready, results, go, start = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    children = [ctx.Process(target=_child, daemon=True, args=(
        Plan(host, port, request, share, warmup, duration, timeout), ready, go, start, results))
        for share in shares]
    for child in children:
        child.start()
    try:
        for _ in children:
            ready.get(timeout=30)
        start.value = time.monotonic()
        go.set()
        collected = [results.get(timeout=warmup + duration + timeout + 30) for _ in children]
    except queue.Empty:
        raise RuntimeError("a load generator process did not report") from None
    finally:
        for child in children:
            child.join(5)
            if child.is_alive():
                child.kill()
                child.join()
    return summarize(collected, duration)


def summarize(collected: list[tuple[bytes, dict]], duration: float) -> dict:
    latencies: list[float] = []
    errors: Counter = Counter()
    for raw, kinds in collected:
        latencies.extend(array.array("d", raw))
        errors.update(kinds)
    latencies.sort()
    return {"requests": len(latencies), "seconds": duration,
            "requests_per_sec": len(latencies) / duration,
            "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
            "errors": sum(errors.values()), "error_kinds": dict(errors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body", default="")
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--timeout", type=float, default=5, help="seconds to wait for an answer")
    args = parser.parse_args()
    result = run(args.url, method=args.method, body=args.body, headers=tuple(args.header),
                 connections=args.connections, processes=args.processes,
                 duration=args.duration, warmup=args.warmup, timeout=args.timeout)
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
