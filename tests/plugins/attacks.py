"""Slow clients and floods, run in a process of their own (so that the test process, which
measures the probes, competes for no interpreter lock with them).

    with attack(slowloris, port, 1000) as report: ...   # report() -> what it did so far
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import resource
from collections.abc import Callable, Iterator
from typing import Any

HALF_A_REQUEST_LINE = b"GET /_api/health HT"
PING = b"POST /_api/rpc/ping HTTP/1.1\r\nhost: flood\r\ncontent-length: 2\r\n\r\n{}"


@contextlib.contextmanager
def attack(kind: Callable[..., Any], port: int, clients: int,
           ready_timeout: float = 60) -> Iterator[Callable[[], dict]]:
    """Run `kind` against `port` with `clients` connections until the block ends; yields
    once every connection is open (or has sent its first request)."""
    context = multiprocessing.get_context("spawn")
    stop, ready, results = context.Event(), context.Event(), context.Queue()
    process = context.Process(target=_run, args=(kind, port, clients, stop, ready, results))
    process.start()
    try:
        if not ready.wait(ready_timeout):
            raise AssertionError(f"{kind.__name__}: {clients} connections not open in time")
        yield lambda: _latest(results)
    finally:
        stop.set()
        process.join(30)
        if process.is_alive():
            process.kill()


def _latest(results: Any) -> dict:
    latest: dict = {}
    while not results.empty():
        latest = results.get()
    return latest


def _run(kind: Callable[..., Any], port: int, clients: int, stop: Any, ready: Any,
         results: Any) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # each connection is a file
    asyncio.run(kind(port, clients, stop, ready, results))


async def slowloris(port: int, clients: int, stop: Any, ready: Any, results: Any) -> None:
    """Each client sends half a request line and falls silent; when the server cuts it off,
    it connects again and does the same, as an attacker would."""
    stats = {"opened": 0, "cut": 0, "open": 0, "peak_open": 0}

    async def client() -> None:
        while not stop.is_set():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            stats["opened"] += 1
            stats["open"] += 1
            stats["peak_open"] = max(stats["peak_open"], stats["open"])
            writer.write(HALF_A_REQUEST_LINE)
            await writer.drain()
            await reader.read()  # until the server hangs up
            stats["open"] -= 1
            stats["cut"] += 1
            writer.close()

    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    await _report_until_stopped(stats, lambda: stats["opened"] >= clients, stop, ready, results)
    for task in tasks:
        task.cancel()


async def flood(port: int, clients: int, stop: Any, ready: Any, results: Any) -> None:
    """Each client calls a function over its keep-alive connection as fast as it can."""
    stats: dict[str, Any] = {"requests": 0, "statuses": {}}

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while not stop.is_set():
            writer.write(PING)
            status_line = await reader.readuntil(b"\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            status = int(status_line.split()[1])
            stats["statuses"][status] = stats["statuses"].get(status, 0) + 1
            stats["requests"] += 1
        writer.close()

    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    await _report_until_stopped(stats, lambda: stats["requests"] >= clients, stop, ready,
                                results)
    for task in tasks:
        task.cancel()


async def _report_until_stopped(stats: dict, started: Callable[[], bool], stop: Any,
                                ready: Any, results: Any) -> None:
    while not stop.is_set():
        if started():
            ready.set()
        results.put(dict(stats))
        await asyncio.sleep(0.1)  # the reporting period, not a wait for anything
    results.put(dict(stats))
