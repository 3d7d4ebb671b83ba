"""Gateway throughput: requests/s and p50/p99 latency of the full gateway against a bare app
(target: at least 70% of the bare app's throughput on a trivial public query), and of the
gateway with observability on against the same gateway with it off (target: overhead under
15%).

    python bench/gateway.py [--peer bare|observability] [--duration 10] [--connections 16]
                            [--workers 2] [--threads 8] [--rounds 6] [--loadgen auto|wrk|python]

With `--peer observability`, both servers are forge-node: one exports traces (sampling 1.0),
metrics (every second) and logs over OTLP/HTTP to a sink in another process that reads and
acknowledges every request, the other has observability off.

Two servers run side by side in the same run, on one fresh database:
- forge-node: `forge-node run` with roles gateway + function, `[auth] jwt_secret` set (so the
  auth path is live), log level warning, and one public query `trivial` running SELECT 1;
- bare: a plain falcon app under plain `gunicorn -k gthread` with the same workers, threads and
  keep-alive, answering the same JSON from the same SELECT 1 on a psycopg_pool per worker.

Each case (GET /_api/health, POST /_api/rpc/trivial on each server) gets a warm-up and then
`--duration` seconds of closed-loop load over `--connections` keep-alive connections, from
another process: wrk when it is on PATH (`apt-get install wrk`), otherwise bench/loadgen.py.
Requests/s counts 2xx answers only; every other answer, reset or timeout is an error. CPU
ms/req is the user + system CPU that the server's processes and its PostgreSQL backends spent
per 2xx answer (from /proc), which neighbours on the machine disturb far less than requests/s.
The cases alternate between the servers, `--rounds` times, and which server goes first in a
pair alternates from round to round: each column is the median over the rounds, and the
requests/s ratio is the median of the rounds' ratios (each pair ran back to back). The load
generator shares the machine's cores with both servers and PostgreSQL.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
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

import psycopg

sys.path.insert(0, str(Path(__file__).parent))
from _support import descendants, free_port, fresh_database, postgres, proc_table, stop

BENCH = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
TARGET_RATIO = {"bare": 0.70, "observability": 0.85}
OBSERVABILITY_ON = """enabled = true
otlp_endpoint = "{endpoint}"
sampling_ratio = 1.0
metrics_interval_secs = 1"""
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
    return ctx.db.execute("SELECT 1 AS one").fetchone()
'''

BARE_APP = '''
import json
import math
import os
import threading
import uuid

import falcon
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

_pool = None
_lock = threading.Lock()


def pool():
    """Created on first use, so in the worker after gunicorn forked it."""
    global _pool
    if _pool is None:
        with _lock:
            if _pool is None:
                _pool = ConnectionPool(os.environ["DATABASE_URL"], min_size=1,
                                       max_size=int(os.environ["BARE_THREADS"]),
                                       kwargs={"row_factory": dict_row}, open=True)
    return _pool


class Health:
    def on_get(self, req, resp):
        resp.media = {"status": "healthy", "version": "0.1.0"}


class Trivial:
    def on_post(self, req, resp):
        body = json.loads(req.bounded_stream.read() or b"{}")
        body.get("args")
        with pool().connection() as conn:
            row = conn.execute("SELECT 1 AS one").fetchone()
        resp.content_type = falcon.MEDIA_JSON
        resp.text = json.dumps({"success": True, "data": row, "request_id": str(uuid.uuid4())},
                               separators=(",", ":"))


app = falcon.App()
app.add_route("/_api/health", Health())
app.add_route("/_api/rpc/trivial", Trivial())
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


def forge_node_command(app: Path) -> list[str]:
    return [str(BIN / "forge-node"), "run", "--config", str(app / "forge.toml")]


def bare_command(folder: Path, port: int, workers: int, threads: int) -> list[str]:
    return [str(BIN / "gunicorn"), "--chdir", str(folder), "-k", "gthread",
            "--workers", str(workers), "--threads", str(threads), "--keep-alive", "5",
            "--log-level", "warning", "-b", f"127.0.0.1:{port}", "bare:app"]


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


def measure_round(cases: list[Case], number: int, loadgen: str, tmp: Path,
                  args: argparse.Namespace, meter: CpuMeter) -> list[Result]:
    """Every case once, in case order; each pair runs back to back, and which of its two
    servers goes first alternates from one round to the next. (In a run with two identical
    servers, the one measured first in each pair came out 2-11% slower: alternating keeps
    such an order effect out of the ratio.)"""
    order = [0, 1, 2, 3] if number % 2 == 0 else [1, 0, 3, 2]
    results = {index: measure(cases[index], loadgen, tmp, args.connections, args.duration,
                              meter) for index in order}
    return [results[index] for index in range(len(cases))]


def median_result(results: list[Result]) -> Result:
    """Each column's median over the rounds; errors summed over every round."""
    kinds: Counter = Counter()
    for result in results:
        kinds.update(result.error_kinds)
    return Result(*(statistics.median(getattr(r, name) for r in results)
                    for name in ("requests_per_sec", "p50_ms", "p99_ms")),
                  sum(kinds.values()), dict(kinds),
                  statistics.median(r.cpu_ms for r in results))


def report(cases: list[Case], rounds: list[list[Result]], settings: str, peer: str) -> None:
    results = [median_result([r[i] for r in rounds]) for i in range(len(cases))]
    print(settings)
    print(f"{'case':<34}{'requests/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
          f"{'CPU ms/req':>12}")
    for case, result in zip(cases, results, strict=True):
        print(f"{case.label:<34}{result.requests_per_sec:>11.1f}{result.p50_ms:>9.2f}"
              f"{result.p99_ms:>9.2f}{result.errors:>8}{result.cpu_ms:>12.3f}")
    for case, result in zip(cases, results, strict=True):
        if result.errors:
            print(f"  errors in {case.label}: {result.error_kinds}")
    ours, theirs = cases[0].server.name, cases[1].server.name
    for number, r in enumerate(rounds, 1):
        print(f"  round {number}, requests/s {ours} / {theirs}: health "
              f"{r[0].requests_per_sec:.0f} / {r[1].requests_per_sec:.0f}, trivial query "
              f"{r[2].requests_per_sec:.0f} / {r[3].requests_per_sec:.0f} = "
              f"{ratio(r[2], r[3]):.2f}")
    health, query = median_ratio(rounds, 0, 1), median_ratio(rounds, 2, 3)
    print(f"ratio {ours} / {theirs}, requests/s (median over the rounds): health "
          f"{health:.2f}, trivial query {query:.2f}")
    cpu_health, cpu_query = (results[0].cpu_ms / results[1].cpu_ms,
                             results[2].cpu_ms / results[3].cpu_ms)
    print(f"ratio {ours} / {theirs}, server CPU per request: health {cpu_health:.2f}, "
          f"trivial query {cpu_query:.2f} (requests per CPU second: {1 / cpu_health:.0%} and "
          f"{1 / cpu_query:.0%} of {theirs}'s)")
    clean = not any(result.errors for result in results)
    target = TARGET_RATIO[peer]
    verdict = "PASS" if query >= target and clean else "FAIL"
    print(f"target: trivial query at least {target:.0%} of {theirs}'s requests/s -> {verdict} "
          f"({query:.0%}{'' if clean else ', with errors'})")


def median_ratio(rounds: list[list[Result]], ours: int, bare: int) -> float:
    """Each round's pair ran back to back, so a neighbour's load hits both sides alike."""
    return statistics.median(ratio(r[ours], r[bare]) for r in rounds)


def ratio(ours: Result, bare: Result) -> float:
    return ours.requests_per_sec / bare.requests_per_sec if bare.requests_per_sec else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", choices=("bare", "observability"), default="bare",
                        help="bare: a plain falcon app; observability: forge-node with "
                             "observability off, against it on")
    parser.add_argument("--duration", type=float, default=10, help="seconds measured per case")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6,
                        help="every case is measured once per round, alternating the servers "
                             "and which of them goes first")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    args = parser.parse_args()
    loadgen = choose_loadgen(args.loadgen)
    with postgres() as admin_url, tempfile.TemporaryDirectory() as tmp_name, \
            contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if args.peer == "bare":
            ours, theirs = start_forge_and_bare(stack, args, admin_url, tmp, env)
        else:
            ours, theirs = start_with_and_without_observability(stack, args, admin_url, tmp,
                                                                env)
        cases = cases_for(ours, theirs)
        meter = CpuMeter(admin_url)
        try:
            rounds = [measure_round(cases, number, loadgen, tmp, args, meter)
                      for number in range(args.rounds)]
        finally:
            meter.close()
    report(cases, rounds, settings(args, loadgen), args.peer)


def start_forge_and_bare(stack: contextlib.ExitStack, args: argparse.Namespace, admin_url: str,
                         tmp: Path, env: dict) -> tuple[Server, Server]:
    forge = Server("forge-node", f"http://127.0.0.1:{free_port()}", "bench_gateway")
    bare = Server("bare", f"http://127.0.0.1:{free_port()}", "bench_gateway_bare")
    app = write_apps(tmp, "forge_app", port_of(forge), args.workers, args.threads)
    (tmp / "bare.py").write_text(BARE_APP)
    stack.enter_context(serving(
        forge, forge_node_command(app),
        {**env, "DATABASE_URL": fresh_database(admin_url, forge.database)},
        tmp / "forge-node.log", "/_api/ready"))
    stack.enter_context(serving(
        bare, bare_command(tmp, port_of(bare), args.workers, args.threads),
        {**env, "DATABASE_URL": fresh_database(admin_url, bare.database),
         "BARE_THREADS": str(args.threads)}, tmp / "bare.log", "/_api/health"))
    return forge, bare


def start_with_and_without_observability(stack: contextlib.ExitStack,
                                         args: argparse.Namespace, admin_url: str, tmp: Path,
                                         env: dict) -> tuple[Server, Server]:
    sink_port = free_port()
    sink = Server("otlp sink", f"http://127.0.0.1:{sink_port}", "")
    stack.enter_context(serving(sink, [sys.executable, "-c", OTLP_SINK, str(sink_port)], env,
                                tmp / "sink.log", None))
    observed = Server("observability on", f"http://127.0.0.1:{free_port()}",
                      "bench_gateway_observed")
    plain = Server("observability off", f"http://127.0.0.1:{free_port()}", "bench_gateway")
    for server, observability in (
            (observed, OBSERVABILITY_ON.format(endpoint=sink.base_url)), (plain, "")):
        app = write_apps(tmp, server.database, port_of(server), args.workers, args.threads,
                         observability)
        stack.enter_context(serving(
            server, forge_node_command(app),
            {**env, "DATABASE_URL": fresh_database(admin_url, server.database)},
            tmp / f"{server.database}.log", "/_api/ready"))
    return observed, plain


def port_of(server: Server) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def cases_for(ours: Server, theirs: Server) -> list[Case]:
    """In this order: the report pairs 0 with 1 and 2 with 3."""
    return [Case(f"{ours.name} GET /_api/health", ours, "GET", "/_api/health"),
            Case(f"{theirs.name} GET /_api/health", theirs, "GET", "/_api/health"),
            Case(f"{ours.name} POST /_api/rpc/trivial", ours, "POST", "/_api/rpc/trivial",
                 RPC_BODY),
            Case(f"{theirs.name} POST /_api/rpc/trivial", theirs, "POST", "/_api/rpc/trivial",
                 RPC_BODY)]


def settings(args: argparse.Namespace, loadgen: str) -> str:
    return (f"gunicorn gthread, {args.workers} workers x {args.threads} threads, keep-alive 5 s; "
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
