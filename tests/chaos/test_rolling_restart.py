"""A rolling restart under load: two gateway nodes behind a balancer that routes by
`/_api/ready`; each node in turn gets SIGTERM, exits, starts again and is ready, and no
client request fails.

The balancer is the test's own, as small as a real one's rules need: it checks every
backend's readiness every CHECK_INTERVAL_SECS, routes only to ready ones, and tries another
backend when a connection is refused before anything was sent (a request that was sent is
never sent twice: it might not be idempotent).
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.plugins.nodes import NodeProcess, timestamp, wait_until

CHECK_INTERVAL_SECS = 0.05
CLIENTS = 4

MODULE = '''
import forge_node as forge


@forge.query(public=True)
def ping(ctx, args):
    return ctx.db.execute("SELECT 'pong'").fetchone()[0]
'''

NO_BACKEND = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n"


class Balancer:
    """An HTTP balancer on its own event loop and thread, one backend connection per
    request (clients send `Connection: close`)."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.ready = dict.fromkeys(backends, False)
        self.routed: Counter[int] = Counter()
        self.refused = 0
        self.port = 0
        self._turn = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> Balancer:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self._checker = asyncio.create_task(self._check_forever())
        return self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        self._checker.cancel()
        await asyncio.gather(self._checker, return_exceptions=True)
        self._server.close()

    async def _check_forever(self) -> None:
        while True:
            await asyncio.gather(*(self._check(port) for port in self.backends))
            await asyncio.sleep(CHECK_INTERVAL_SECS)  # the check period of the balancer

    async def _check(self, port: int) -> None:
        try:
            status = await asyncio.wait_for(ready_status(port), 1)
        except (OSError, TimeoutError, ValueError, IndexError):
            status = None
        self.ready[port] = status == 200

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(await self._forward(await read_request(reader)))
            await writer.drain()
        finally:
            writer.close()

    async def _forward(self, request: bytes) -> bytes:
        for port in self._candidates():
            try:
                backend_reader, backend_writer = await asyncio.open_connection("127.0.0.1",
                                                                               port)
            except ConnectionRefusedError:
                self.refused += 1
                continue  # nothing was sent: another backend may take it
            self.routed[port] += 1
            try:
                backend_writer.write(request)
                response = await backend_reader.read()  # the backend closes when done
            except OSError:
                return BAD_GATEWAY
            finally:
                backend_writer.close()
            return response or BAD_GATEWAY
        return NO_BACKEND

    def _candidates(self) -> list[int]:
        """The ready backends, starting with the next one in turn."""
        ready = [port for port in self.backends if self.ready[port]]
        start = next(self._turn) % len(ready) if ready else 0
        return ready[start:] + ready[:start]


async def ready_status(port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /_api/ready HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
        return int((await reader.readline()).split()[1])
    finally:
        writer.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return head + await reader.readexactly(length)


class Load:
    """CLIENTS threads calling `ping` through the balancer in a loop, as fast as answered."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/_api/rpc/ping"
        self.sent = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True)
                         for _ in range(CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def _client(self) -> None:
        while not self._stop.is_set():
            self.sent += 1
            request = urllib.request.Request(self.url, data=b"{}", method="POST")
            try:
                with urllib.request.urlopen(request, timeout=10) as resp:
                    assert resp.read() and resp.status == 200
            except Exception as exc:  # every failure counts, whatever its kind
                self.failures.append(repr(exc))


@pytest.fixture
def two_nodes(make_app, start_node, database_url) -> Iterator[list[NodeProcess]]:
    nodes = [start_node(make_app(module=MODULE, node={"roles": ["gateway", "function"],
                                                      "drain_timeout_secs": 10}),
                        database_url) for _ in range(2)]
    yield [node.wait_ready() for node in nodes]


def restart(node: NodeProcess, balancer: Balancer) -> tuple[float, float]:
    """SIGTERM the node, wait for its exit, start it again and wait until the balancer
    routes to it; (seconds to drain and exit, seconds from start to routed again)."""
    port = node.app.port
    stopped_at = time.time()
    node.send(signal.SIGTERM)
    assert node.wait(30) == 0
    drained_at = time.time()
    served_before = balancer.routed[port]  # requests routed during the drain count before
    starts = sum(1 for e in node.events() if e.get("event") == "node.ready")
    node.start()
    ready = node.wait_for_event("node.ready", count=starts + 1)
    wait_until(lambda: balancer.routed[port] > served_before, timeout=10,
               message=f"the balancer routes to {port} again")
    routed_at = time.time()
    print(f"node {port}: drained and exited in {drained_at - stopped_at:.2f} s; ready "
          f"{timestamp(ready) - drained_at:.2f} s after its start, routed "
          f"{routed_at - drained_at:.2f} s after it")
    return drained_at - stopped_at, routed_at - drained_at


def test_a_rolling_restart_under_load_fails_no_request(two_nodes):
    ports = [node.app.port for node in two_nodes]
    with Balancer(ports) as balancer:
        wait_until(lambda: all(balancer.ready.values()), message="both backends ready")
        with Load(balancer.port) as load:
            wait_until(lambda: min(balancer.routed[p] for p in ports) >= 20,
                       message="load on both backends")
            for node in two_nodes:
                restart(node, balancer)
    print(f"rolling restart: {load.sent} requests sent, {len(load.failures)} failed, "
          f"{balancer.refused} connections refused and retried, routed {dict(balancer.routed)}")
    assert load.failures == []
    assert load.sent >= 200
