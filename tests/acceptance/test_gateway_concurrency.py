"""The gateway's async core through real gunicorn and uvicorn workers: functions that block
never stall it, a function takes a connection only when it uses one, and a node holds
thousands of open connections."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import resource
import socket
import statistics
import time
import urllib.request

import psutil
import pytest

from tests.plugins.nodes import wait_until

MODULE = '''
import asyncio
import time
import forge_node as forge


@forge.query(public=True)
def nap(ctx, args):
    time.sleep(args.get("secs", 2))
    return "rested"


@forge.query(public=True)
async def async_nap(ctx, args):
    await asyncio.sleep(args.get("secs", 0.5))
    return "rested"


@forge.query(public=True)
def db_nap(ctx, args):
    ctx.db.execute("SELECT pg_sleep(%s)", [args.get("secs", 0.5)])
    return "rested"


@forge.query(public=True)
def ping(ctx, args):
    return "pong"
'''


def call(port: int, name: str, args: dict | None = None, timeout: float = 30) -> tuple:
    body = json.dumps({"args": args or {}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/_api/rpc/{name}", data=body,
                                     method="POST", headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return resp.status, json.load(resp)["data"]


def health_seconds(port: int) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_api/health", timeout=10) as resp:
        assert resp.status == 200
    return time.perf_counter() - started


def gateway_node(make_app, start_node, database_url, **gateway):
    app = make_app(module=MODULE, node={"roles": ["gateway", "function"]},
                   gateway={"workers": 1, **gateway})
    return app, start_node(app, database_url).wait_ready()


def test_fifty_def_functions_sleeping_in_python_never_stall_health(make_app, start_node,
                                                                    database_url):
    app, _ = gateway_node(make_app, start_node, database_url, threads=50)
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        naps = [pool.submit(call, app.port, "nap", {"secs": 2}) for _ in range(50)]
        time.sleep(0.5)  # the naps are in their threads: what health meets, not a wait
        timings = [health_seconds(app.port) for _ in range(5)]
        results = [nap.result() for nap in naps]
    assert results == [(200, "rested")] * 50
    assert statistics.median(timings) < 0.1, timings
    assert max(timings) < 1.0, timings


def gateway_sessions(db) -> int:
    return db.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name "
                      "LIKE 'forge-node gateway%%' AND application_name NOT LIKE '%% ready'"
                      ).fetchone()[0]


def test_a_function_that_never_uses_ctx_db_takes_no_connection(make_app, start_node,
                                                                database_url, db):
    app, _ = gateway_node(make_app, start_node, database_url, threads=8)
    call(app.port, "ping")
    opened = gateway_sessions(db)  # the pool opens with one connection
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for name in ("nap", "async_nap"):
            calls = [pool.submit(call, app.port, name, {"secs": 0.5}) for _ in range(16)]
            assert [c.result() for c in calls] == [(200, "rested")] * 16
    assert gateway_sessions(db) == opened <= 1  # a pool keeps what it had to open
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: call(app.port, "db_nap", {"secs": 0.5}), range(8)))
    assert gateway_sessions(db) > opened  # the count does see connections being taken


def test_two_thousand_idle_connections_stay_open_while_calls_answer(make_app, start_node,
                                                                     database_url):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    try:
        app, node = gateway_node(make_app, start_node, database_url)
        with contextlib.ExitStack() as stack:
            idle = [stack.enter_context(keep_alive(app.port)) for _ in range(2000)]
            wait_until(lambda: connections_of(node) >= 2000, timeout=30,
                       message="the gateway holds 2,000 connections")
            assert call(app.port, "ping") == (200, "pong")
            assert all(still_open(sock) for sock in idle[::100])
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def keep_alive(port: int):
    """A connection that made one request and then sits idle, as a browser's does."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/_api/health")
    conn.getresponse().read()
    try:
        yield conn.sock
    finally:
        conn.close()


def still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True  # nothing to read, and not closed
    finally:
        sock.setblocking(True)


def connections_of(node) -> int:
    """TCP connections held by the node's gateway workers."""
    workers = [p for p in node.tree() if "gateway worker" in " ".join(p.cmdline())]
    return sum(len(p.net_connections(kind="tcp")) for p in workers if p.is_running())


def test_the_node_raises_its_open_files_limit(make_app, start_node, database_url):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        _, node = gateway_node(make_app, start_node, database_url)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    worker = next(p for p in node.tree() if "gateway worker" in " ".join(p.cmdline()))
    assert psutil.Process(worker.pid).rlimit(psutil.RLIMIT_NOFILE) == (hard, hard)
    if hard > 1024:
        raised = node.wait_for_event("node.open_files_limit")
        assert raised["open_files"] == hard


def hung_up(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes `sock` within `timeout` (reads until end of file)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def test_a_client_that_sends_its_headers_slowly_is_cut_off(make_app, start_node,
                                                           database_url):
    app, _ = gateway_node(make_app, start_node, database_url, header_timeout_secs=1)
    silent = socket.create_connection(("127.0.0.1", app.port))  # connects, never sends
    fresh = socket.create_connection(("127.0.0.1", app.port))
    assert 0.9 < seconds_until_cut_while_trickling(fresh) < 5
    kept_alive = socket.create_connection(("127.0.0.1", app.port))  # one prompt request first
    kept_alive.sendall(b"GET /_api/health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert kept_alive.recv(4096).startswith(b"HTTP/1.1 200")
    assert 0.9 < seconds_until_cut_while_trickling(kept_alive) < 5
    assert hung_up(silent, timeout=5)
    assert health_seconds(app.port) < 1  # a prompt client is served as ever
    for sock in (silent, fresh, kept_alive):
        sock.close()


def seconds_until_cut_while_trickling(sock: socket.socket) -> float:
    """Send a request's headers a byte every 50 ms (each byte in time, the whole never) until
    the server hangs up; how long that took."""
    started = time.monotonic()
    request = b"GET /_api/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    try:
        for byte in request:
            sock.sendall(bytes([byte]))
            if not still_open(sock):
                break
            time.sleep(0.05)
    except OSError:
        pass
    return time.monotonic() - started


def post(port: int, name: str) -> tuple[int, dict, str | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", f"/_api/rpc/{name}", body=b"{}",
                     headers={"content-type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read()), resp.getheader("connection")
    finally:
        conn.close()


def get_status(port: int, path: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return resp.status


def test_past_max_connections_calls_get_503_while_probes_answer(make_app, start_node,
                                                                database_url):
    app, _ = gateway_node(make_app, start_node, database_url, max_connections=5)
    with contextlib.ExitStack() as stack:
        for _ in range(5):
            stack.enter_context(keep_alive(app.port))
        status, body, connection = post(app.port, "ping")
        assert (status, body["error"]["code"], connection) == (503, "SERVICE_UNAVAILABLE",
                                                               "close")
        assert get_status(app.port, "/_api/health") == 200
        assert get_status(app.port, "/_api/ready") == 200
    wait_until(lambda: post(app.port, "ping")[0] == 200, message="calls answer again")


def test_a_limit_too_low_for_max_connections_is_logged(make_app, start_node, database_url):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("the hard open-files limit is unlimited: no limit to be below")
    _, node = gateway_node(make_app, start_node, database_url, max_connections=hard)
    warned = node.wait_for_event("node.open_files_too_low")
    assert (warned["open_files"], warned["needed"]) == (hard, hard + 256)
