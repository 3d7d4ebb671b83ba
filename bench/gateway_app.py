"""The gateway's own CPU per request, without HTTP: forge-node's falcon app against a bare one.

    python bench/gateway_app.py [--requests 3000] [--rounds 5]
    python bench/gateway_app.py --paired [--rounds 40]

bench/gateway.py measures whole servers under load, which on a shared machine swings by up to
2x from one run to the next, and most of whose CPU is gunicorn's, the same for both servers.
This one calls each ASGI app in-process, one request after another on one event loop, and
divides the CPU time of the calling process (every thread: the function threads and span
export included) by the requests: the steadiest view of what forge-node's middleware, auth,
function runner and telemetry add. The cases, each in a fresh process of its own, alternating
over the rounds:

- bare: bench/gateway.py's bare falcon ASGI app (the same `SELECT 1` on a psycopg_pool, run
  on a thread pool as a `def` function is);
- forge-node: the gateway's app as a gunicorn worker builds it (`create_app`), observability
  off;
- forge-node observed: the same with traces (sampling 1.0), metrics and logs exported to a
  receiver in another process (bench/gateway.py's OTLP sink).

Each figure is the median over the rounds, in microseconds of CPU per request, for
`GET /_api/health` and `POST /_api/rpc/select_one` (a `def` function running SELECT 1).

`--paired` measures observability alone, more steadily still: both forge-node apps are built
in one process and called in turn, 300 select_one calls at a time, `--rounds` times (say 40);
it prints the median and quartiles of the pairs' differences, for the whole process and for
the event loop's thread alone (the rest is the function threads, span export and metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _support import free_port, fresh_database, postgres
from gateway import (
    BARE_APP,
    FORGE_APP,
    JWT_SECRET,
    OBSERVABILITY_ON,
    OTLP_SINK,
    RPC_BODY,
    Server,
    port_of,
    serving,
)

CASES = ("bare", "forge-node", "forge-node observed")
ROUTES = (("health", "GET", "/_api/health"), ("select one", "POST", "/_api/rpc/select_one"))
WARMUP_REQUESTS = 300
PAIRED_REQUESTS = 300

FORGE_TOML = """\
[project]
name = "bench"
app = "app"

[database]
url = "${{DATABASE_URL}}"

[auth]
jwt_secret = "{secret}"

[observability]
log_level = "warning"
{observability}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="per case and route")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--paired", action="store_true",
                        help="observability only: both forge-node apps in one process")
    parser.add_argument("--measure", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--sink", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_here(args.measure, args.requests, args.sink)))
        return
    if args.paired and args.sink:
        print(json.dumps(measure_paired(args.rounds, args.sink)))
        return
    sink = Server("otlp sink", f"http://127.0.0.1:{free_port()}", "")
    with postgres() as admin_url, tempfile.TemporaryDirectory() as tmp, \
            serving(sink, [sys.executable, "-c", OTLP_SINK, str(port_of(sink))],
                    dict(os.environ), Path(tmp) / "sink.log", None):
        env = {**os.environ, "DATABASE_URL": fresh_database(admin_url, "bench_gateway_app"),
               "BENCH_THREADS": "8"}
        if args.paired:
            report_paired(run_paired(args.rounds, sink.base_url, env), args.rounds)
            return
        rounds = []
        for number in range(1, args.rounds + 1):
            results = {case: run_case(case, args.requests, sink.base_url, env)
                       for case in CASES}
            rounds.append(results)
            print(f"round {number}: " + "; ".join(
                f"{case} " + " / ".join(f"{us:.0f}" for us in figures.values())
                for case, figures in results.items()) + " us (health / select one)",
                flush=True)
    report(rounds, args)


def run_case(case: str, requests: int, sink: str, env: dict) -> dict[str, float]:
    return in_fresh_process(case, ["--measure", case, "--requests", str(requests)], sink, env)


def in_fresh_process(what: str, arguments: list[str], sink: str, env: dict) -> Any:
    """This script run again with `arguments`: the JSON its last line prints."""
    command = [sys.executable, __file__, *arguments, "--sink", sink]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    if out.returncode != 0:
        raise RuntimeError(f"{what} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def measure_here(case: str, requests: int, sink: str) -> dict[str, float]:
    """In a fresh process: build the case's app, warm it up, time each route."""
    with tempfile.TemporaryDirectory() as tmp:
        app, close = build_app(case, Path(tmp), sink)
        try:
            figures = {}
            for label, method, path in ROUTES:
                call(app, method, path, WARMUP_REQUESTS)
                started = time.process_time()
                call(app, method, path, requests)
                figures[label] = (time.process_time() - started) / requests * 1e6
            return figures
        finally:
            close()


def run_paired(rounds: int, sink: str, env: dict) -> dict[str, list[float]]:
    return in_fresh_process("paired run", ["--paired", "--rounds", str(rounds)], sink, env)


def measure_paired(rounds: int, sink: str) -> dict[str, list[float]]:
    """Both forge-node apps in this one process, called in turn PAIRED_REQUESTS select_one
    queries at a time: each pair of chunks ran back to back, so the machine's neighbours
    weigh on both alike. Per chunk: the process's CPU (every thread) and the calling
    thread's, in microseconds per request."""
    cases = ("forge-node", "forge-node observed")
    figures: dict[str, list[float]] = {f"{case} {kind}": [] for case in cases
                                       for kind in ("process", "thread")}
    with tempfile.TemporaryDirectory() as tmp:
        apps = {}
        for case in cases:
            folder = Path(tmp) / case.replace(" ", "_")
            folder.mkdir()
            apps[case] = build_app(case, folder, sink)
        try:
            for app, _ in apps.values():
                call(app, "POST", "/_api/rpc/select_one", WARMUP_REQUESTS)
            for _ in range(rounds):
                for case, (app, _) in apps.items():
                    process, thread = time.process_time(), time.thread_time()
                    call(app, "POST", "/_api/rpc/select_one", PAIRED_REQUESTS)
                    figures[f"{case} process"].append(
                        (time.process_time() - process) / PAIRED_REQUESTS * 1e6)
                    figures[f"{case} thread"].append(
                        (time.thread_time() - thread) / PAIRED_REQUESTS * 1e6)
        finally:
            for _, close in apps.values():
                close()
    return figures


def report_paired(figures: dict[str, list[float]], rounds: int) -> None:
    print(f"{rounds} pairs of {PAIRED_REQUESTS} select_one calls, both forge-node apps in one "
          f"process, called in turn")
    for kind, what in (("process", "every thread"), ("thread", "the request thread")):
        off, on = figures[f"forge-node {kind}"], figures[f"forge-node observed {kind}"]
        differences = [b - a for a, b in zip(off, on, strict=True)]
        low, middle, high = statistics.quantiles(differences, n=4)
        print(f"CPU of {what}: off {statistics.median(off):.0f} us/req, on "
              f"{statistics.median(on):.0f}; observability adds {middle:.0f} us "
              f"(median of the pairs' differences; quartiles {low:.0f} and {high:.0f})")


def build_app(case: str, tmp: Path, sink: str):
    """The ASGI app and what closes it."""
    if case == "bare":
        (tmp / "bare.py").write_text(BARE_APP)
        sys.path.insert(0, str(tmp))
        import bare
        return bare.app, lambda: bare.pool().close()

    from forge_node import config as config_module
    from forge_node.app import load_app
    from forge_node.http.app import DrainFlag, GatewayDeps, create_app
    from forge_node.observability.otel import Telemetry

    observability = OBSERVABILITY_ON.format(endpoint=sink) if case.endswith("observed") else ""
    (tmp / "forge.toml").write_text(FORGE_TOML.format(secret=JWT_SECRET,
                                                      observability=observability))
    (tmp / "app.py").write_text(FORGE_APP)
    config = config_module.load(tmp / "forge.toml")
    registry = load_app(tmp, "app")
    telemetry = Telemetry.start(config.observability, config.project.name, "gateway",
                                str(uuid.uuid4()))
    deps = GatewayDeps.build(config, os.environ["DATABASE_URL"], registry, telemetry,
                             DrainFlag(), "bench gateway_app", uuid.uuid4())

    def close() -> None:
        if deps.runner is not None:
            deps.runner.close()
        telemetry.shutdown()

    return create_app(deps), close


def call(app, method: str, path: str, requests: int) -> None:
    """`requests` requests, one after another, on one event loop (as a uvicorn worker's)."""
    body = RPC_BODY.encode() if method == "POST" else b""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 40000),
             "server": ("127.0.0.1", 8080),
             "headers": [(b"host", b"127.0.0.1:8080"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}
    statuses: list[int] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def run() -> None:
        for _ in range(requests):
            await app(dict(scope), receive, send)
            if statuses[-1] != 200:
                raise RuntimeError(f"{method} {path} answered {statuses[-1]}")

    LOOP.run_until_complete(run())


LOOP = asyncio.new_event_loop()  # one for the process: the apps' async pools live on it


def report(rounds: list[dict[str, dict[str, float]]], args: argparse.Namespace) -> None:
    def median(case: str, label: str) -> float:
        return statistics.median(r[case][label] for r in rounds)

    print(f"\n{args.requests} requests per case and route, in-process, one thread; median of "
          f"{args.rounds} rounds")
    print(f"{'case':22s}" + "".join(f"{label + ' us/req':>24s}" for label, _, _ in ROUTES))
    for case in CASES:
        print(f"{case:22s}" + "".join(f"{median(case, label):24.1f}" for label, _, _ in ROUTES))
    for label, _, _ in ROUTES:
        bare, forge, observed = (median(case, label) for case in CASES)
        print(f"{label}: forge-node adds {forge - bare:.0f} us to the bare app's {bare:.0f} "
              f"({forge / bare:.2f}x); observability adds {observed - forge:.0f} us "
              f"({observed / forge:.2f}x)")


if __name__ == "__main__":
    main()
