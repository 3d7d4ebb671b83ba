"""Gateway throughput: requests/s, p50/p99 latency and server CPU per request of the full
gateway against the peers a Python user would pick instead, or of the gateway with
observability on against off.

    python bench/gateway.py [--peer peers|observability] [--duration 10] [--connections 16]
                            [--workers 2] [--threads 8] [--rounds 6] [--loadgen auto|wrk|python]
                            [--idle-connections 10000]

`--peer peers` (the default) runs three servers side by side in the same run, each on a fresh
database of its own, with the same worker count:
- forge-node: `forge-node run` with roles gateway + function, `[auth] jwt_secret` set (so the
  auth path is live), correlation headers as always, metrics exported every second to an
  OTLP sink in another process, and five public functions (below);
- bare: a plain falcon ASGI app under the same gunicorn with the same uvicorn worker (uvloop,
  httptools), answering the same JSON the same way (a `def` endpoint on a thread pool of
  `--threads`, psycopg pools of `--threads` connections);
- fastapi: FastAPI on `uvicorn --workers` (uvloop, httptools), `def` endpoints on its own
  thread pool, the same psycopg pools.
The cases: GET /_api/health, and POST /_api/rpc/ to `trivial` (a `def` function, no
database), `trivial_async` (an `async def` one), `select_one` (`def`, SELECT 1) and
`select_one_async` (`async def`, SELECT 1 on an async pool). Targets: forge-node at least
1.5x FastAPI's requests/s on the two trivial cases and 1.1x on the two SELECT 1 cases, and at
least 70% of bare's on the two async cases. Then `--idle-connections` keep-alive connections
are opened to forge-node and left idle, and the growth of its workers' memory is reported
per connection.

`--peer observability`: both servers are forge-node: one exports traces (sampling 1.0),
metrics (every second) and logs over OTLP/HTTP to a sink that reads and acknowledges every
request, the other has observability off (target: at least 85% of its requests/s on
`select_one`).

Each case gets a warm-up and then `--duration` seconds of closed-loop load over
`--connections` keep-alive connections, from another process: wrk when it is on PATH
(`apt-get install wrk`), otherwise bench/loadgen.py. Requests/s counts 2xx answers only;
every other answer, reset or timeout is an error. CPU ms/req is the user + system CPU that
the server's processes and its PostgreSQL backends spent per 2xx answer (from /proc), which
neighbours on the machine disturb far less than requests/s. Each endpoint's cases run back to
back, in an order of servers that rotates from round to round (with two identical servers,
the one measured first came out 2-11% slower); each column is the median over `--rounds`,
and each ratio the median of the rounds' ratios. The load generator shares the machine's
cores with the servers and PostgreSQL.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import math
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).parent))
from _support import descendants, free_port, fresh_database, postgres, proc_table, stop

BENCH = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
OBSERVABILITY_ON = """enabled = true
otlp_endpoint = "{endpoint}"
sampling_ratio = 1.0
metrics_interval_secs = 1"""
METRICS_ON = """enabled = true
otlp_endpoint = "{endpoint}"
enable_traces = false
enable_logs = false
metrics_interval_secs = 1"""
# (case, peer): the least requests/s ratio forge-node / peer that passes
TARGETS = {("trivial", "fastapi"): 1.5, ("trivial_async", "fastapi"): 1.5,
           ("select_one", "fastapi"): 1.1, ("select_one_async", "fastapi"): 1.1,
           ("trivial_async", "bare"): 0.70, ("select_one_async", "bare"): 0.70,
           ("select_one", "observability off"): 0.85, ("trivial", "forge-node gthread"): 2.0}
FUNCTIONS = ("trivial", "trivial_async", "select_one", "select_one_async")
OTLP_SINK = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
"""
WARMUP_SECS = 2
STOP_TIMEOUT_SECS = 40
JWT_SECRET = "bench-gateway-secret-0123456789abcdefghij"  # 40 characters
RPC_BODY = '{"args": {}}'

FORGE_TOML = """\
[project]
name = "bench_gateway"
app = "app"

[database]
url = "${{DATABASE_URL}}"
pool_size = {threads}

[gateway]
port = {port}
workers = {workers}
threads = {threads}

[auth]
jwt_secret = "{secret}"

[observability]
log_level = "warning"
{observability}

[node]
roles = ["gateway", "function"]
"""

FORGE_APP = '''
import forge_node as forge


@forge.query(public=True)
def trivial(ctx, args):
    return {"ok": True}


@forge.query(public=True)
async def trivial_async(ctx, args):
    return {"ok": True}


@forge.query(public=True)
def select_one(ctx, args):
    return ctx.db.execute("SELECT 1 AS one").fetchone()


@forge.query(public=True)
async def select_one_async(ctx, args):
    cursor = await ctx.db.execute("SELECT 1 AS one")
    return await cursor.fetchone()
'''

# The peers' shared parts: psycopg pools of BENCH_THREADS connections, opened in the worker.
PEER_POOLS = '''
import asyncio
import json
import os
import uuid

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

THREADS = int(os.environ["BENCH_THREADS"])
_pool = None
_async_pool = None


def pool():
    global _pool
    if _pool is None:
        _pool = ConnectionPool(os.environ["DATABASE_URL"], min_size=1, max_size=THREADS,
                               kwargs={"row_factory": dict_row}, open=True)
    return _pool


async def async_pool():
    global _async_pool
    if _async_pool is None:
        _async_pool = AsyncConnectionPool(os.environ["DATABASE_URL"], min_size=1,
                                          max_size=THREADS, kwargs={"row_factory": dict_row},
                                          open=False)
        await _async_pool.open()
    return _async_pool


def select_one():
    with pool().connection() as conn:
        return conn.execute("SELECT 1 AS one").fetchone()


async def select_one_async():
    async with (await async_pool()).connection() as conn:
        cursor = await conn.execute("SELECT 1 AS one")
        return await cursor.fetchone()


def answer(data):
    return {"success": True, "data": data, "request_id": str(uuid.uuid4())}
'''

BARE_APP = PEER_POOLS + '''
import concurrent.futures

import falcon
import falcon.asgi

threads = concurrent.futures.ThreadPoolExecutor(THREADS)


async def in_thread(fn):
    return await asyncio.get_running_loop().run_in_executor(threads, fn)


class Health:
    async def on_get(self, req, resp):
        resp.media = {"status": "healthy", "version": "0.1.0"}


class Function:
    def __init__(self, run):
        self.run = run

    async def on_post(self, req, resp):
        json.loads(await req.stream.read() or b"{}").get("args")
        resp.content_type = falcon.MEDIA_JSON
        resp.text = json.dumps(answer(await self.run()), separators=(",", ":"))


app = falcon.asgi.App()
app.add_route("/_api/health", Health())
app.add_route("/_api/rpc/trivial", Function(lambda: in_thread(lambda: {"ok": True})))
app.add_route("/_api/rpc/trivial_async", Function(lambda: asyncio.sleep(0, {"ok": True})))
app.add_route("/_api/rpc/select_one", Function(lambda: in_thread(select_one)))
app.add_route("/_api/rpc/select_one_async", Function(select_one_async))
'''

FASTAPI_APP = PEER_POOLS + '''
from fastapi import FastAPI

app = FastAPI()


@app.get("/_api/health")
async def health():
    return {"status": "healthy", "version": "0.1.0"}


@app.post("/_api/rpc/trivial")
def trivial(body: dict):
    return answer({"ok": True})


@app.post("/_api/rpc/trivial_async")
async def trivial_async(body: dict):
    return answer({"ok": True})


@app.post("/_api/rpc/select_one")
def select_one_endpoint(body: dict):
    return answer(select_one())


@app.post("/_api/rpc/select_one_async")
async def select_one_async_endpoint(body: dict):
    return answer(await select_one_async())
'''

WRK_SCRIPT = """\
wrk.method = "{method}"
wrk.body = '{body}'
{headers}
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) non2xx = 0 end
function response(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end
function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do bad = bad + thread:get("non2xx") end
  local e = summary.errors
  io.write(string.format('BENCH {{"requests": %.0f, "duration_us": %.0f, "p50_us": %.0f, '
    .. '"p99_us": %.0f, "non2xx": %.0f, "connect": %.0f, "read": %.0f, "write": %.0f, '
    .. '"timeout": %.0f}}\\n', summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), bad, e.connect, e.read, e.write, e.timeout))
end
"""


@dataclasses.dataclass
class Server:
    name: str
    base_url: str
    database: str  # its own database, so that its PostgreSQL backends can be told apart
    pid: int = 0
    endpoints: tuple[str, ...] | None = None  # those it serves; None: every one


@dataclasses.dataclass(frozen=True)
class Case:
    label: str
    server: Server
    method: str
    path: str
    body: str = ""


@dataclasses.dataclass(frozen=True)
class Result:
    requests_per_sec: float
    p50_ms: float
    p99_ms: float
    errors: int
    error_kinds: dict
    cpu_ms: float = math.nan  # server CPU (its processes + its backends) per 2xx answer


def write_apps(tmp: Path, name: str, port: int, workers: int, threads: int,
               observability: str = "") -> Path:
    app = tmp / name
    app.mkdir()
    (app / "forge.toml").write_text(FORGE_TOML.format(port=port, workers=workers,
                                                      threads=threads, secret=JWT_SECRET,
                                                      observability=observability))
    (app / "app.py").write_text(FORGE_APP)
    return app


@contextlib.contextmanager
def serving(server: Server, command: list[str], env: dict, log: Path,
            ready_path: str | None) -> Iterator[None]:
    """Run a server in its own session until the block ends; SIGTERM it, then kill on timeout."""
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        server.pid = proc.pid
        if ready_path is None:
            wait_until_listening(proc, port_of(server), log)
        else:
            wait_until_ready(proc, server.base_url + ready_path, log)
        yield
    finally:
        stop(proc, STOP_TIMEOUT_SECS)


def wait_until_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} "
                               f"answered:\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f} s:\n{log_tail(log)}")


def wait_until_listening(proc: subprocess.Popen, port: int, log: Path,
                         timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{log_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout:.0f} s")


def log_tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def forge_node_command(app: Path, executable: Path = BIN / "forge-node") -> list[str]:
    return [str(executable), "run", "--config", str(app / "forge.toml")]


def bare_command(folder: Path, port: int, workers: int) -> list[str]:
    """The bare app under gunicorn with uvicorn's worker (uvloop and httptools, as installed),
    keep-alive as forge-node's."""
    return [str(BIN / "gunicorn"), "--chdir", str(folder), "-k", "uvicorn_worker.UvicornWorker",
            "--workers", str(workers), "--keep-alive", "75", "--log-level", "warning",
            "-b", f"127.0.0.1:{port}", "bare:app"]


def fastapi_command(folder: Path, port: int, workers: int) -> list[str]:
    return [str(BIN / "uvicorn"), "--app-dir", str(folder), "--workers", str(workers),
            "--loop", "uvloop", "--http", "httptools", "--timeout-keep-alive", "75",
            "--no-access-log", "--log-level", "warning", "--host", "127.0.0.1",
            "--port", str(port), "fastapi_app:app"]


class CpuMeter:
    """CPU seconds used so far by a server's process tree and its database's backends (/proc).

    The load generator and neighbours on the machine change how many requests a server gets
    through in a second far more than how much CPU each request costs it.
    """

    def __init__(self, admin_url: str) -> None:
        self.conn = psycopg.connect(admin_url, autocommit=True)

    def close(self) -> None:
        self.conn.close()

    def seconds(self, server: Server) -> float | None:
        procs = proc_table()
        if not procs:
            return None
        pids = descendants(procs, server.pid)
        rows = self.conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s",
                                 [server.database]).fetchall()
        pids |= {pid for (pid,) in rows if pid in procs and procs[pid][1] == "postgres"}
        return sum(procs[pid][2] for pid in pids)


def run_wrk(case: Case, tmp: Path, connections: int, seconds: float) -> Result:
    script = tmp / f"wrk_{case.method.lower()}.lua"
    headers = 'wrk.headers["Content-Type"] = "application/json"' if case.body else ""
    script.write_text(WRK_SCRIPT.format(method=case.method, body=case.body, headers=headers))
    threads = max(1, min(connections, os.cpu_count() or 1))
    out = run_load([shutil.which("wrk"), "-t", str(threads), "-c", str(connections),
                    "-d", f"{seconds:g}s", "--timeout", "5s", "-s", str(script),
                    case.server.base_url + case.path], seconds)
    line = next(x for x in out.splitlines() if x.startswith("BENCH "))
    raw = json.loads(line.removeprefix("BENCH "))
    kinds = {k: raw[k] for k in ("non2xx", "connect", "read", "write", "timeout") if raw[k]}
    return Result((raw["requests"] - raw["non2xx"]) / (raw["duration_us"] / 1e6),
                  raw["p50_us"] / 1000, raw["p99_us"] / 1000, sum(kinds.values()), kinds)


def run_python_loadgen(case: Case, connections: int, seconds: float) -> Result:
    command = [sys.executable, str(BENCH / "loadgen.py"), case.server.base_url + case.path,
               "--method", case.method, "--connections", str(connections),
               "--processes", str(max(1, min(connections, os.cpu_count() or 1))),
               "--duration", f"{seconds:g}", "--warmup", "0"]
    if case.body:
        command += ["--body", case.body, "--header", "Content-Type: application/json"]
    raw = json.loads(run_load(command, seconds).splitlines()[-1])
    return Result(raw["requests_per_sec"], raw["p50_ms"], raw["p99_ms"], raw["errors"],
                  raw["error_kinds"])


def run_load(command: list[str], seconds: float) -> str:
    """The load generator's stdout; it is stopped here whatever happens."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=seconds + 60)
    finally:
        stop(proc, STOP_TIMEOUT_SECS)
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(command[0]).name} failed ({proc.returncode}): {err.strip()}")
    return out


def choose_loadgen(wanted: str) -> str:
    if wanted == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if wanted == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not on PATH (apt-get install wrk), use --loadgen python")
    return wanted


def measure(case: Case, loadgen: str, tmp: Path, connections: int, duration: float,
            meter: CpuMeter) -> Result:
    """A warm-up run that is thrown away, then the measured run with the server's CPU."""
    def load(seconds: float) -> Result:
        if loadgen == "wrk":
            return run_wrk(case, tmp, connections, seconds)
        return run_python_loadgen(case, connections, seconds)

    load(WARMUP_SECS)
    before = meter.seconds(case.server)
    result = load(duration)
    after = meter.seconds(case.server)
    answered = result.requests_per_sec * duration
    if before is None or after is None or not answered:
        return result
    return dataclasses.replace(result, cpu_ms=(after - before) * 1000 / answered)


def measure_round(groups: list[list[Case]], number: int, loadgen: str, tmp: Path,
                  args: argparse.Namespace, meter: CpuMeter) -> list[list[Result]]:
    """Every case once: an endpoint's cases back to back, the servers' order rotated by the
    round's number (with two identical servers, the one measured first in a pair came out
    2-11% slower: rotating keeps such an order effect out of the ratios)."""
    results = []
    for group in groups:
        shift = number % len(group)
        order = list(range(len(group)))[shift:] + list(range(len(group)))[:shift]
        measured = {i: measure(group[i], loadgen, tmp, args.connections, args.duration, meter)
                    for i in order}
        results.append([measured[i] for i in range(len(group))])
    return results


def median_result(results: list[Result]) -> Result:
    """Each column's median over the rounds; errors summed over every round."""
    kinds: Counter = Counter()
    for result in results:
        kinds.update(result.error_kinds)
    return Result(*(statistics.median(getattr(r, name) for r in results)
                    for name in ("requests_per_sec", "p50_ms", "p99_ms")),
                  sum(kinds.values()), dict(kinds),
                  statistics.median(r.cpu_ms for r in results))


def report(groups: list[list[Case]], rounds: list[list[list[Result]]], settings: str) -> None:
    print(settings)
    print(f"{'case':<44}{'requests/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
          f"{'CPU ms/req':>12}")
    medians = [[median_result([r[g][i] for r in rounds]) for i in range(len(group))]
               for g, group in enumerate(groups)]
    for group, results in zip(groups, medians, strict=True):
        for case, result in zip(group, results, strict=True):
            print(f"{case.label:<44}{result.requests_per_sec:>11.1f}{result.p50_ms:>9.2f}"
                  f"{result.p99_ms:>9.2f}{result.errors:>8}{result.cpu_ms:>12.3f}")
            if result.errors:
                print(f"  errors: {result.error_kinds}")
    ours = groups[0][0].server.name
    verdicts = []
    for g, group in enumerate(groups):
        endpoint = group[0].path.rsplit("/", 1)[1]
        for i, case in enumerate(group[1:], 1):
            peer = case.server.name
            per_round = [ratio(r[g][0], r[g][i]) for r in rounds]
            cpu = medians[g][i].cpu_ms / medians[g][0].cpu_ms if medians[g][0].cpu_ms else 0
            print(f"{endpoint:<17} {ours} / {peer}: requests/s {statistics.median(per_round):.2f}"
                  f" (rounds: {', '.join(f'{x:.2f}' for x in per_round)}); requests per CPU "
                  f"second {cpu:.2f}")
            target = TARGETS.get((endpoint, peer))
            if target is not None:
                clean = not (medians[g][0].errors or medians[g][i].errors)
                met = statistics.median(per_round) >= target and clean
                verdicts.append(f"{endpoint} vs {peer} at least {target:.2f}x: "
                                f"{'PASS' if met else 'FAIL'} ({statistics.median(per_round):.2f}"
                                f"{'' if clean else ', with errors'})")
    for verdict in verdicts:
        print(f"target: {verdict}")


def ratio(ours: Result, bare: Result) -> float:
    return ours.requests_per_sec / bare.requests_per_sec if bare.requests_per_sec else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", choices=("peers", "observability"), default="peers",
                        help="peers: bare falcon ASGI and FastAPI; observability: forge-node "
                             "with observability off, against it on")
    parser.add_argument("--duration", type=float, default=10, help="seconds measured per case")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6,
                        help="every case is measured once per round, rotating the servers")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--endpoints", help="comma-separated: a subset of the cases, e.g. "
                                            "health,trivial")
    parser.add_argument("--gthread-checkout", type=Path,
                        help="also run the forge-node of this checkout (its .venv), the last "
                             "gthread gateway (commit 270d0f7), on health, trivial, select_one")
    parser.add_argument("--idle-connections", type=int, default=10_000,
                        help="open this many idle connections to forge-node at the end and "
                             "report its memory per connection (0: skip)")
    args = parser.parse_args()
    loadgen = choose_loadgen(args.loadgen)
    with postgres() as admin_url, tempfile.TemporaryDirectory() as tmp_name, \
            contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "BENCH_THREADS": str(args.threads)}
        sink = start_sink(stack, tmp, env)
        if args.peer == "peers":
            servers = start_forge_and_peers(stack, args, admin_url, tmp, env, sink)
            endpoints = ("health", *FUNCTIONS)
        else:
            servers = start_with_and_without_observability(stack, args, admin_url, tmp, env,
                                                           sink)
            endpoints = ("health", "select_one")
        if args.endpoints:
            endpoints = tuple(e for e in endpoints if e in args.endpoints.split(","))
        groups = [[case_for(server, endpoint) for server in servers
                   if server.endpoints is None or endpoint in server.endpoints]
                  for endpoint in endpoints]
        meter = CpuMeter(admin_url)
        try:
            rounds = []
            for number in range(args.rounds):
                rounds.append(measure_round(groups, number, loadgen, tmp, args, meter))
                print(f"round {number + 1} done", flush=True)
        finally:
            meter.close()
        memory = idle_connection_memory(servers[0], args.idle_connections) \
            if args.peer == "peers" and args.idle_connections else None
    report(groups, rounds, settings(args, loadgen))
    if memory is not None:
        print(f"forge-node with {args.idle_connections} idle keep-alive connections open: its "
              f"gateway workers grew by {memory[0] / 2**20:.1f} MiB, {memory[1]:.0f} bytes per "
              f"connection")


def start_sink(stack: contextlib.ExitStack, tmp: Path, env: dict) -> Server:
    """An OTLP/HTTP receiver in another process that acknowledges every export."""
    sink_port = free_port()
    sink = Server("otlp sink", f"http://127.0.0.1:{sink_port}", "")
    stack.enter_context(serving(sink, [sys.executable, "-c", OTLP_SINK, str(sink_port)], env,
                                tmp / "sink.log", None))
    return sink


def start_forge(stack: contextlib.ExitStack, server: Server, args: argparse.Namespace,
                admin_url: str, tmp: Path, env: dict, observability: str,
                executable: Path = BIN / "forge-node") -> None:
    app = write_apps(tmp, server.database, port_of(server), args.workers, args.threads,
                     observability)
    stack.enter_context(serving(
        server, forge_node_command(app, executable),
        {**env, "DATABASE_URL": fresh_database(admin_url, server.database)},
        tmp / f"{server.database}.log", "/_api/ready"))


def start_forge_and_peers(stack: contextlib.ExitStack, args: argparse.Namespace,
                          admin_url: str, tmp: Path, env: dict, sink: Server) -> list[Server]:
    forge = Server("forge-node", f"http://127.0.0.1:{free_port()}", "bench_gateway")
    bare = Server("bare", f"http://127.0.0.1:{free_port()}", "bench_gateway_bare")
    fastapi = Server("fastapi", f"http://127.0.0.1:{free_port()}", "bench_gateway_fastapi")
    metrics = METRICS_ON.format(endpoint=sink.base_url)
    start_forge(stack, forge, args, admin_url, tmp, env, metrics)
    (tmp / "bare.py").write_text(BARE_APP)
    (tmp / "fastapi_app.py").write_text(FASTAPI_APP)
    for server, command in ((bare, bare_command(tmp, port_of(bare), args.workers)),
                            (fastapi, fastapi_command(tmp, port_of(fastapi), args.workers))):
        stack.enter_context(serving(
            server, command, {**env, "DATABASE_URL": fresh_database(admin_url, server.database)},
            tmp / f"{server.name}.log", "/_api/health"))
    if args.gthread_checkout is None:
        return [forge, bare, fastapi]
    gthread = Server("forge-node gthread", f"http://127.0.0.1:{free_port()}",
                     "bench_gateway_gthread", endpoints=("health", "trivial", "select_one"))
    start_forge(stack, gthread, args, admin_url, tmp, env, metrics,
                args.gthread_checkout / ".venv" / "bin" / "forge-node")
    return [forge, bare, fastapi, gthread]


def start_with_and_without_observability(stack: contextlib.ExitStack,
                                         args: argparse.Namespace, admin_url: str, tmp: Path,
                                         env: dict, sink: Server) -> list[Server]:
    observed = Server("observability on", f"http://127.0.0.1:{free_port()}",
                      "bench_gateway_observed")
    plain = Server("observability off", f"http://127.0.0.1:{free_port()}", "bench_gateway")
    start_forge(stack, observed, args, admin_url, tmp, env,
                OBSERVABILITY_ON.format(endpoint=sink.base_url))
    start_forge(stack, plain, args, admin_url, tmp, env, "")
    return [observed, plain]


def idle_connection_memory(server: Server, count: int) -> tuple[int, float]:
    """Open `count` keep-alive connections that each made one request, then sit idle; the
    growth of the server's gateway workers' resident memory, total and per connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    workers = [p for p in psutil.Process(server.pid).children(recursive=True)
               if "gateway worker" in " ".join(p.cmdline())]
    before = sum(p.memory_info().rss for p in workers)
    opened = []
    try:
        for _ in range(count):
            conn = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=30)
            conn.request("GET", "/_api/health")
            conn.getresponse().read()
            opened.append(conn)
        grown = sum(p.memory_info().rss for p in workers) - before
        return grown, grown / count
    finally:
        for conn in opened:
            conn.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def port_of(server: Server) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def case_for(server: Server, endpoint: str) -> Case:
    if endpoint == "health":
        return Case(f"{server.name} GET /_api/health", server, "GET", "/_api/health")
    return Case(f"{server.name} POST /_api/rpc/{endpoint}", server, "POST",
                f"/_api/rpc/{endpoint}", RPC_BODY)


def settings(args: argparse.Namespace, loadgen: str) -> str:
    return (f"{args.workers} workers each, {args.threads} threads and database connections "
            f"per worker, keep-alive 75 s; "
            f"{args.connections} connections, {WARMUP_SECS} s warm-up + {args.duration:g} s "
            f"per case, rounds: {args.rounds}\nload from {loadgen_name(loadgen)}, on the same "
            f"{os.cpu_count()} cores as the servers and PostgreSQL")


def loadgen_name(loadgen: str) -> str:
    if loadgen == "python":
        return "bench/loadgen.py"
    version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    return version.split(" [")[0].strip() or "wrk"


if __name__ == "__main__":
    main()
