"""Scenario 7, slow clients and floods: with the default limits, one gateway node (one
worker, the harder case) keeps answering its health and readiness probes within a second
while 1,000 slowloris clients hold connections open, and while a flood of calls runs.

The figures are printed (run with -s): probe latency p50 and max under each attack."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import pytest

from tests.plugins.attacks import attack, flood, slowloris
from tests.plugins.nodes import NodeProcess, shared_node
from tests.plugins.rawhttp import exchange

SLOWLORIS_CLIENTS = 1000
HEADER_TIMEOUT_SECS = 10  # the default, so the attack window below spans a cut and a reconnect
FLOOD_CLIENTS = 50  # calling back to back: the worker at its full capacity
USUAL_RATE = 200  # calls/s: a busy steady load for one gateway node; the flood is 10x that
PROBE = {path: f"GET {path} HTTP/1.1\r\nhost: probe\r\n\r\n".encode()
         for path in ("/_api/health", "/_api/ready")}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(pg_server, tmp_path_factory) -> Iterator[NodeProcess]:
    with shared_node(pg_server, tmp_path_factory.mktemp("slow-clients"), MODULE_PING,
                     node={"roles": ["gateway", "function"]}) as started:
        yield started


MODULE_PING = '''
import forge_node as forge


@forge.query(public=True)
def ping(ctx, args):
    return "pong"
'''


def probe_for(port: int, seconds: float) -> dict[str, list[float]]:
    """Health and readiness, each on a new connection as a load balancer's probe, every
    0.1 s for `seconds`: their latencies; each must be a 200."""
    latencies: dict[str, list[float]] = {path: [] for path in PROBE}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for path, request in PROBE.items():
            answer = exchange(port, request, timeout=5)
            assert answer.status == 200, (path, answer)
            latencies[path].append(answer.seconds)
        time.sleep(0.1)  # the probes' period
    return latencies


def summary(latencies: dict[str, list[float]]) -> str:
    return ", ".join(f"{path} p50 {statistics.median(seconds) * 1000:.1f} ms max "
                     f"{max(seconds) * 1000:.1f} ms ({len(seconds)} probes)"
                     for path, seconds in latencies.items())


def assert_prompt(latencies: dict[str, list[float]]) -> None:
    for path, seconds in latencies.items():
        assert max(seconds) < 1.0, (path, sorted(seconds)[-5:])


def test_probes_answer_within_a_second_under_1000_slowloris_connections(node):
    with attack(slowloris, node.app.port, SLOWLORIS_CLIENTS) as report:
        latencies = probe_for(node.app.port, HEADER_TIMEOUT_SECS + 3)
        stats = report()
    print(f"\nslowloris, {stats['peak_open']} connections held at once, {stats['opened']} "
          f"opened, {stats['cut']} cut by the header timeout: {summary(latencies)}")
    assert stats["peak_open"] >= SLOWLORIS_CLIENTS
    assert stats["cut"] >= SLOWLORIS_CLIENTS  # the header timeout cut every one of them
    assert_prompt(latencies)
    health = sorted(latencies["/_api/health"])  # nearly every one well within 100 ms; the
    assert health[len(health) * 9 // 10] < 0.1, health[-5:]  # rest: a loaded CI machine


def test_probes_answer_within_a_second_under_a_flood_of_calls(node):
    with attack(flood, node.app.port, FLOOD_CLIENTS) as report:
        before, started = report(), time.monotonic()
        latencies = probe_for(node.app.port, 5)
        after, elapsed = report(), time.monotonic() - started
    rate = (after["requests"] - before.get("requests", 0)) / elapsed
    print(f"\nflood, {FLOOD_CLIENTS} clients: {rate:.0f} calls/s ({rate / USUAL_RATE:.0f}x "
          f"{USUAL_RATE}/s), statuses {after['statuses']}: {summary(latencies)}")
    assert set(after["statuses"]) == {200}
    assert rate >= 10 * USUAL_RATE, "not a flood: the clients did not load the node enough"
    assert_prompt(latencies)
