"""Live updates: how fast one change reaches thousands of SSE subscribers, what each change
costs the gateway, and what the change trigger costs the app's writers.

    python bench/live.py [--subscribers 1000,10000] [--changes 20] [--scaling 1,100,1000]
                         [--scaling-changes 8] [--rounds 3] [--write-seconds 5]
                         [--write-connections 4] [--workers 2] [--debounce-ms 50]

Two `forge-node run` nodes of one app on one PostgreSQL (bench/_support.py's `postgres()`):
a gateway node (roles gateway + function, `--workers` workers, `[gateway] max_connections`
raised above the subscribers; forge-node raises its own open-files limit to the hard limit),
and a writer node on another port, where the mutation `add_item` inserts one row into
`items`. The live query `latest` (`@forge.query(live=["items"])`, `async def`) returns the
newest row's id, so every result names the last change it reflects; it also appends a byte
to a file per run, which counts the re-runs.

Subscribers are held by this one process: one asyncio (uvloop) protocol per SSE connection,
httptools for the chunked HTTP, the open-files limit raised to the hard limit; each opens
GET /_api/events, reads its `connected` session id, subscribes with POST /_api/subscribe
(over a few shared keep-alive connections) and waits for its first `result`.

- Fan-out, for each N of `--subscribers` (targets: p99 under 250 ms for 1,000, under 1 s for
  10,000): a fresh gateway node; its workers' RSS (from /proc) after a warm-up, then after N
  identical subscribers have their first result: the growth per subscriber. Then `--changes`
  mutations, one a second, on the writer node. The latency of a (change, subscriber) pair is
  from the mutation's HTTP response (after its commit) to the first event that subscriber
  gets showing that row; p50 and p99 are over every pair. The next change waits until every
  subscriber has the last one (or 10 s), so the mutation's response is read by an idle loop.
- Scaling: one gateway node; N identical subscriptions (args {}) against N distinct ones
  (args {"tag": i}: one group each, so one re-run each per change), for each N of
  `--scaling`, `--scaling-changes` changes each, the order of the two kinds alternating from
  round to round over `--rounds` rounds. Per change: the CPU of the gateway node's processes
  and of PostgreSQL's (from the mutation to the last subscriber's event, /proc), and re-runs.
- Writers: `--write-connections` processes insert one row per transaction (plain psycopg,
  autocommit, prepared) for `--write-seconds` into `writes_live`, which a live query declares
  (so it carries forge-node's statement trigger, which writes the change log), and into
  `writes_plain`, the same table without it; the gateway's listeners are up (idle sessions
  open). The two alternate in order over `--rounds` rounds. Target: at least 80% of the
  inserts per second kept; the ratio is the median of the rounds'.

Every client, node and PostgreSQL share the machine's cores: the latencies include this
process reading every event, and its CPU per change is printed beside the gateway's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httptools
import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).parent))
from _support import descendants, free_port, fresh_database, postgres, proc_table
from gateway import Server, forge_node_command, port_of, serving

TARGET_P99_SECS = {1_000: 0.25, 10_000: 1.0}
TARGET_WRITES_KEPT = 0.80
DELIVERY_TIMEOUT_SECS = 10
OPEN_CONCURRENCY = 64    # subscribers being opened at once
POST_CONNECTIONS = 16    # keep-alive connections shared by the subscribing POSTs
WARMUP_SUBSCRIBERS = 8
DATABASE = "bench_live"

FORGE_TOML = """\
[project]
name = "bench_live"
app = "app"

[database]
url = "${{DATABASE_URL}}"
pool_size = 8

[gateway]
port = {port}
workers = {workers}
max_connections = {max_connections}

[gateway.subscriptions]
debounce_ms = {debounce_ms}

[observability]
log_level = "warning"

[node]
roles = ["gateway", "function"]
"""

APP = '''
import os

import forge_node as forge

RUNS_FILE = os.environ["BENCH_RUNS_FILE"]


def count_run():
    fd = os.open(RUNS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, b".")
    finally:
        os.close(fd)


@forge.query(public=True, live=["items"])
async def latest(ctx, args):
    count_run()
    cursor = await ctx.db.execute("SELECT max(id) FROM items")
    return {"last": (await cursor.fetchone())[0], "tag": args.get("tag")}


@forge.mutation(public=True)
async def add_item(ctx, args):
    cursor = await ctx.db.execute("INSERT INTO items DEFAULT VALUES RETURNING id")
    return (await cursor.fetchone())[0]


@forge.query(public=True, live=["writes_live"])
async def writes(ctx, args):
    cursor = await ctx.db.execute("SELECT count(*) FROM writes_live")
    return (await cursor.fetchone())[0]
'''

MIGRATION = """\
CREATE TABLE items (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
CREATE TABLE writes_live (id bigserial PRIMARY KEY, body text NOT NULL,
                          at timestamptz NOT NULL DEFAULT now());
CREATE TABLE writes_plain (id bigserial PRIMARY KEY, body text NOT NULL,
                           at timestamptz NOT NULL DEFAULT now());
"""

# One writer connection: inserts one row per transaction from `start` to `end` (monotonic
# clock, shared by every process), then prints how many it committed in that window.
WRITE_LOAD = """
import sys, time
import psycopg
url, table, start, end = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
statement = f"INSERT INTO {table} (body) VALUES ('x')"
with psycopg.connect(url, autocommit=True) as conn:
    conn.execute(statement, prepare=True)
    while time.monotonic() < start:
        time.sleep(0.001)
    done = 0
    while time.monotonic() < end:
        conn.execute(statement, prepare=True)
        done += 1
print(done)
"""


# -- the subscribers' side: one protocol per SSE connection ----------------------------------

class Progress:
    """How many subscribers have seen row `target` yet; `done` is set once all have."""

    def __init__(self) -> None:
        self.subscribers: list[Subscriber] = []
        self.target = math.inf
        self.count = 0
        self.done = asyncio.Event()

    def expect(self, target: int) -> None:
        self.target = target
        self.count = sum(1 for s in self.subscribers if s.latest >= target)
        self.done.clear()
        if self.count >= len(self.subscribers):
            self.done.set()

    def seen(self, before: int, after: int) -> None:
        if before < self.target <= after:
            self.count += 1
            if self.count >= len(self.subscribers):
                self.done.set()


class Subscriber(asyncio.Protocol):
    """One SSE stream: every `result` is kept as (newest row id it shows, arrival time)."""

    def __init__(self, port: int, progress: Progress) -> None:
        loop = asyncio.get_running_loop()
        self.request = (f"GET /_api/events HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
                        "accept: text/event-stream\r\n\r\n").encode()
        self.progress = progress
        self.parser = httptools.HttpResponseParser(self)
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.session_id: asyncio.Future[str] = loop.create_future()
        self.first: asyncio.Future[None] = loop.create_future()
        self.received: list[tuple[int, float]] = []
        self.latest = 0
        self.errors: list[str] = []  # events other than results, and a stream that ended
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(f"bad HTTP: {exc}")

    def on_headers_complete(self) -> None:
        if self.parser.get_status_code() != 200:
            self.fail(f"GET /_api/events answered {self.parser.get_status_code()}")

    def on_body(self, body: bytes) -> None:
        self.buffer += body
        while (end := self.buffer.find(b"\n\n")) >= 0:
            block, self.buffer = self.buffer[:end], self.buffer[end + 2:]
            self.on_event(block)

    def on_event(self, block: bytes) -> None:
        now = time.monotonic()
        fields = dict(line.split(b": ", 1) for line in block.split(b"\n")
                      if b": " in line and not line.startswith(b":"))
        event, data = fields.get(b"event"), fields.get(b"data", b"{}")
        if event == b"result":
            last = json.loads(data)["data"]["last"] or 0
            self.received.append((last, now))
            before, self.latest = self.latest, max(self.latest, last)
            self.progress.seen(before, self.latest)
            if not self.first.done():
                self.first.set_result(None)
        elif event == b"connected":
            self.session_id.set_result(json.loads(data)["session_id"])
        elif event is not None:
            self.errors.append(f"{event.decode()}: {data.decode()[:200]}")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self.errors.append(f"the stream ended ({exc or 'closed by the server'})")
        self.fail(f"the stream ended ({exc or 'closed'})")

    def fail(self, why: str) -> None:
        for future in (self.session_id, self.first):
            if not future.done():
                future.set_exception(RuntimeError(why))
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        self.closing = True
        self.progress = Progress()  # late events no longer count
        if self.transport is not None:
            self.transport.close()


class HttpConnection:
    """One keep-alive HTTP/1.1 connection for JSON POSTs, reopened when the server closed it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict) -> tuple[int, dict]:
        for attempt in (1, 2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                return await self._post(path, json.dumps(body).encode())
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()  # an idle keep-alive connection the server closed: once more
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _post(self, path: str, data: bytes) -> tuple[int, dict]:
        assert self.reader is not None and self.writer is not None
        self.writer.write(b"POST %b HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: "
                          b"application/json\r\ncontent-length: %d\r\n\r\n%b"
                          % (path.encode(), len(data), data))
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in head[1:] if line)}
        body = await self.reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return int(head[0].split()[1]), json.loads(body) if body else {}

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class PostPool:
    def __init__(self, port: int, size: int) -> None:
        self.idle: asyncio.Queue[HttpConnection] = asyncio.Queue()
        for _ in range(size):
            self.idle.put_nowait(HttpConnection(port))

    async def post(self, path: str, body: dict) -> tuple[int, dict]:
        conn = await self.idle.get()
        try:
            return await conn.post(path, body)
        finally:
            self.idle.put_nowait(conn)

    def close(self) -> None:
        while not self.idle.empty():
            self.idle.get_nowait().close()


# -- measurements ------------------------------------------------------------------------------

@dataclass
class Change:
    row: int
    committed: float          # monotonic time of the mutation's response
    gateway_cpu: float        # seconds, from the mutation to the last subscriber's event
    database_cpu: float
    client_cpu: float
    reruns: int
    missed: int               # subscribers without it after DELIVERY_TIMEOUT_SECS


@dataclass
class CaseResult:
    subscribers: int
    kind: str
    connect_secs: float
    changes: list[Change]
    latencies: list[float]    # seconds, one per (change, subscriber) that got it
    slowest: list[float]      # per change: its last subscriber's latency
    stream_errors: int
    memory: tuple[int, int] | None = None    # RSS grown, bytes; per subscriber
    per_worker: list[int] = field(default_factory=list)  # open files of each gateway worker

    def per_change(self, name: str) -> float:
        """The mean over the changes (a CPU reading moves in clock ticks of 10 ms)."""
        return statistics.fmean(getattr(c, name) for c in self.changes)

    def percentile(self, p: float) -> float:
        return quantile(self.latencies, p) if self.latencies else math.nan


def quantile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))]


class Meter:
    """CPU seconds so far of the gateway node's processes, of PostgreSQL's and of this one."""

    def __init__(self, database_url: str, runs_file: Path) -> None:
        self.conn = psycopg.connect(database_url, autocommit=True)
        self.runs_file = runs_file
        backend = self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        self.postmaster = proc_table().get(backend, (0,))[0]  # 0: PostgreSQL is elsewhere

    def read(self, gateway_pid: int) -> tuple[dict[int, float], dict[int, float], float, int]:
        procs = proc_table()
        cpu = {pid: entry[2] for pid, entry in procs.items()}
        gateway = {p: cpu[p] for p in descendants(procs, gateway_pid)}
        database = {p: cpu[p] for p in descendants(procs, self.postmaster)} \
            if self.postmaster else {}
        return gateway, database, time.process_time(), self.runs_file.stat().st_size

    def sessions(self) -> int:
        return self.conn.execute("SELECT count(*) FROM forge_live_sessions").fetchone()[0]

    def close(self) -> None:
        self.conn.close()


def grown(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two readings; a process born meanwhile counts from zero."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    database_url: str
    meter: Meter
    env: dict
    writer: HttpConnection | None = None  # to the writer node, once it is up


# -- nodes ------------------------------------------------------------------------------------

def write_app(tmp: Path, name: str, port: int, workers: int, args: argparse.Namespace) -> Path:
    app = tmp / name
    (app / "migrations").mkdir(parents=True)
    (app / "forge.toml").write_text(FORGE_TOML.format(
        port=port, workers=workers, max_connections=max_connections(args),
        debounce_ms=args.debounce_ms))
    (app / "app.py").write_text(APP)
    (app / "migrations" / "0001_live_bench.sql").write_text(MIGRATION)
    return app


def max_connections(args: argparse.Namespace) -> int:
    """Per worker: room for every subscriber in one worker (accepts are not spread evenly)."""
    return max([10_000, *args.subscribers, *args.scaling]) + 2_000


@contextlib.contextmanager
def node(bench: Bench, name: str, workers: int) -> Iterator[Server]:
    server = Server(name, f"http://127.0.0.1:{free_port()}", DATABASE)
    app = write_app(bench.tmp, f"{name}-{time.monotonic_ns()}", port_of(server), workers,
                    bench.args)
    with serving(server, forge_node_command(app), bench.env,
                 bench.tmp / f"{app.name}.log", "/_api/ready"):
        yield server


def gateway_workers(server: Server) -> list[psutil.Process]:
    return [p for p in psutil.Process(server.pid).children(recursive=True)
            if "gateway worker" in " ".join(p.cmdline())]


def workers_rss(server: Server) -> int:
    return sum(p.memory_info().rss for p in gateway_workers(server))


def open_files(server: Server) -> list[int]:
    return sorted((p.num_fds() for p in gateway_workers(server)), reverse=True)


# -- a case: open N subscribers, make changes, close them --------------------------------------

async def open_subscribers(server: Server, count: int, distinct: bool,
                           progress: Progress) -> list[Subscriber]:
    loop = asyncio.get_running_loop()
    port = port_of(server)
    posts = PostPool(port, POST_CONNECTIONS)
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    subscribers: list[Subscriber] = []

    async def one(index: int) -> None:
        async with gate:
            _, sub = await loop.create_connection(lambda: Subscriber(port, progress),
                                                  "127.0.0.1", port)
            subscribers.append(sub)
            session_id = await asyncio.wait_for(sub.session_id, 30)
            status, body = await posts.post("/_api/subscribe", {
                "session_id": session_id, "id": "latest", "function": "latest",
                "args": {"tag": index} if distinct else {}})
            if status != 200:
                raise RuntimeError(f"subscribe answered {status}: {body}")
            await asyncio.wait_for(sub.first, 30)

    try:
        async with asyncio.TaskGroup() as group:  # the first failure cancels the others
            for index in range(count):
                group.create_task(one(index))
    except BaseException:
        close_subscribers(subscribers)
        raise
    finally:
        posts.close()
    progress.subscribers = subscribers
    return subscribers


def close_subscribers(subscribers: list[Subscriber]) -> None:
    for sub in subscribers:
        sub.close()


async def make_changes(bench: Bench, server: Server, progress: Progress,
                       count: int) -> list[Change]:
    """`count` mutations on the writer node, a second apart (or later, once every subscriber
    has the previous one): each with the CPU and re-runs it cost."""
    changes = []
    start = time.monotonic()
    for number in range(count):
        await asyncio.sleep(max(0.0, start + number - time.monotonic()))
        gateway, database, client, runs = bench.meter.read(server.pid)
        assert bench.writer is not None
        status, body = await bench.writer.post("/_api/rpc/add_item", {"args": {}})
        committed = time.monotonic()
        if status != 200:
            raise RuntimeError(f"add_item answered {status}: {body}")
        progress.expect(body["data"])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(progress.done.wait(), DELIVERY_TIMEOUT_SECS)
        gateway2, database2, client2, runs2 = bench.meter.read(server.pid)
        changes.append(Change(body["data"], committed, grown(gateway, gateway2),
                              grown(database, database2), client2 - client, runs2 - runs,
                              len(progress.subscribers) - progress.count))
    return changes


def latencies_of(subscribers: list[Subscriber], changes: list[Change]) -> list[list[float]]:
    """Per change, each subscriber's delay from the commit to its first event showing it."""
    per_change: list[list[float]] = [[] for _ in changes]
    for sub in subscribers:
        events = iter(sub.received)
        last, at = -1, math.nan
        for i, change in enumerate(changes):
            while last < change.row:
                last, at = next(events, (math.inf, math.nan))
            if not math.isnan(at):
                per_change[i].append(at - change.committed)
    return per_change


async def run_case(bench: Bench, server: Server, count: int, distinct: bool,
                   changes: int, memory: bool) -> CaseResult:
    progress = Progress()
    before = workers_rss(server) if memory else 0
    started = time.monotonic()
    subscribers = await open_subscribers(server, count, distinct, progress)
    connect_secs = time.monotonic() - started
    grown_rss = workers_rss(server) - before if memory else 0
    per_worker = open_files(server)
    try:
        made = await make_changes(bench, server, progress, changes)
    finally:
        close_subscribers(subscribers)
    per_change = latencies_of(subscribers, made)
    return CaseResult(count, "distinct" if distinct else "identical", connect_secs, made,
                      [x for xs in per_change for x in xs],
                      [max(xs, default=math.nan) for xs in per_change],
                      sum(len(s.errors) for s in subscribers),
                      (grown_rss, grown_rss // count) if memory else None, per_worker)


async def wait_for_no_sessions(bench: Bench, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while bench.meter.sessions() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)


# -- the three parts ---------------------------------------------------------------------------

async def fan_out(bench: Bench) -> list[CaseResult]:
    """For each N: a fresh gateway node, warmed up, its RSS, N identical subscribers."""
    results = []
    for count in bench.args.subscribers:
        with node(bench, "gateway", bench.args.workers) as server:
            await warm_up(bench, server)
            result = await run_case(bench, server, count, False, bench.args.changes, True)
        print_case(result, detail=True)
        results.append(result)
    return results


async def warm_up(bench: Bench, server: Server) -> None:
    """Each worker's first stream opens its listener and pools: not part of any subscriber."""
    progress = Progress()
    subscribers = await open_subscribers(server, WARMUP_SUBSCRIBERS, False, progress)
    await make_changes(bench, server, progress, 1)
    close_subscribers(subscribers)
    await wait_for_no_sessions(bench)


async def scaling(bench: Bench, server: Server) -> list[list[CaseResult]]:
    """Identical against distinct subscriptions, alternating which goes first each round."""
    rounds = []
    kinds = [False, True]
    for number in range(bench.args.rounds):
        print(f"\nscaling round {number + 1}")
        print_scaling_header()
        results = []
        for count in bench.args.scaling:
            for distinct in kinds[number % 2:] + kinds[:number % 2]:
                result = await run_case(bench, server, count, distinct,
                                        bench.args.scaling_changes, False)
                await wait_for_no_sessions(bench)
                print_scaling_row(result.kind, count, scaling_figures(result))
                results.append(result)
        rounds.append(sorted(results, key=lambda r: (r.subscribers, r.kind != "identical")))
    return rounds


async def writers(bench: Bench, server: Server) -> list[tuple[float, float]]:
    """Inserts/s into the table with the trigger and the one without, in alternating order,
    while idle sessions keep the gateway workers' listeners up."""
    progress = Progress()
    idle = await open_subscribers(server, WARMUP_SUBSCRIBERS, False, progress)
    loop = asyncio.get_running_loop()
    rounds = []
    try:
        for number in range(bench.args.rounds):
            order = ["writes_live", "writes_plain"][::1 if number % 2 == 0 else -1]
            rates = {}
            for table in order:
                rates[table] = await loop.run_in_executor(None, insert_rate, bench, table)
            rounds.append((rates["writes_live"], rates["writes_plain"]))
            print(f"  writers round {number + 1} ({' then '.join(order)}): with the trigger "
                  f"{rates['writes_live']:.0f} inserts/s, without {rates['writes_plain']:.0f}"
                  f"; kept {rates['writes_live'] / rates['writes_plain']:.1%}", flush=True)
    finally:
        close_subscribers(idle)
    return rounds


def insert_rate(bench: Bench, table: str) -> float:
    """Rows per second that `--write-connections` processes commit, one row per transaction."""
    start = time.monotonic() + 1.5  # every writer connected and prepared by then
    end = start + bench.args.write_seconds
    procs = [subprocess.Popen([sys.executable, "-c", WRITE_LOAD, bench.database_url, table,
                               repr(start), repr(end)], stdout=subprocess.PIPE, text=True)
             for _ in range(bench.args.write_connections)]
    done = [int(p.communicate(timeout=bench.args.write_seconds + 60)[0]) for p in procs]
    return sum(done) / bench.args.write_seconds


# -- output ------------------------------------------------------------------------------------

def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def print_case(r: CaseResult, detail: bool) -> None:
    memory = "" if r.memory is None else (
        f"; gateway workers' RSS grew {r.memory[0] / 2**20:.1f} MiB, "
        f"{r.memory[1] / 1024:.1f} KiB per subscriber")
    print(f"\n{r.subscribers} {r.kind} subscribers: opened and subscribed in "
          f"{r.connect_secs:.1f} s (open files per gateway worker: "
          f"{', '.join(map(str, r.per_worker))}){memory}")
    print(f"  commit to event, {len(r.changes)} changes x {r.subscribers} subscribers: p50 "
          f"{ms(r.percentile(0.5))} ms, p99 {ms(r.percentile(0.99))} ms, max "
          f"{ms(max(r.latencies, default=math.nan))} ms; missed "
          f"{sum(c.missed for c in r.changes)}; other events and lost streams "
          f"{r.stream_errors}")
    print(f"  per change (mean): gateway node CPU {ms(r.per_change('gateway_cpu'))} ms, "
          f"PostgreSQL CPU {ms(r.per_change('database_cpu'))} ms, this client's CPU "
          f"{ms(r.per_change('client_cpu'))} ms, re-runs {r.per_change('reruns'):g}")
    if detail:
        print("  last subscriber's latency per change, ms: "
              + " ".join(f"{x * 1000:.0f}" for x in r.slowest), flush=True)


def print_scaling_header() -> None:
    print(f"  {'subscriptions':<14}{'N':>7}{'p50 ms':>9}{'p99 ms':>9}{'missed':>8}"
          f"{'gateway CPU ms/change':>23}{'PostgreSQL ms/change':>22}{'re-runs/change':>16}")


def scaling_figures(r: CaseResult) -> tuple[float, ...]:
    """p50, p99, missed, gateway CPU, PostgreSQL CPU (seconds per change), re-runs per change."""
    return (r.percentile(0.5), r.percentile(0.99), sum(c.missed for c in r.changes),
            r.per_change("gateway_cpu"), r.per_change("database_cpu"), r.per_change("reruns"))


def print_scaling_row(kind: str, count: int, figures: tuple[float, ...]) -> None:
    p50, p99, missed, gateway, database, reruns = figures
    print(f"  {kind:<14}{count:>7}{ms(p50):>9}{ms(p99):>9}{missed:>8.0f}{ms(gateway):>23}"
          f"{ms(database):>22}{reruns:>16g}", flush=True)


def report(fanned: list[CaseResult], rounds: list[list[CaseResult]],
           writes: list[tuple[float, float]]) -> None:
    verdicts = []
    if rounds:
        report_scaling(rounds)
    for r in fanned:
        target = TARGET_P99_SECS.get(r.subscribers)
        if target is not None:
            missed = sum(c.missed for c in r.changes)
            met = r.percentile(0.99) < target and not missed
            verdicts.append(f"{r.subscribers} identical subscribers, p99 under {ms(target)} "
                            f"ms: {ms(r.percentile(0.99))} ms"
                            f"{f', {missed} missed' if missed else ''}: "
                            f"{'PASS' if met else 'FAIL'}")
    if writes:
        kept = statistics.median(live / plain for live, plain in writes)
        print(f"\nwriters: inserts/s with the trigger / without, median of {len(writes)} "
              f"rounds: {kept:.3f}")
        verdicts.append(f"writers keep at least {TARGET_WRITES_KEPT:.0%} of their inserts/s "
                        f"with the trigger: {kept:.1%}: "
                        f"{'PASS' if kept >= TARGET_WRITES_KEPT else 'FAIL'}")
    print()
    for verdict in verdicts:
        print(f"target: {verdict}")


def report_scaling(rounds: list[list[CaseResult]]) -> None:
    print(f"\nscaling, medians of {len(rounds)} rounds (missed: summed)")
    print_scaling_header()
    medians = {}
    for i, first in enumerate(rounds[0]):
        figures = [scaling_figures(r[i]) for r in rounds]
        median = tuple(statistics.median(column) for column in zip(*figures, strict=True))
        median = (*median[:2], sum(f[2] for f in figures), *median[3:])
        medians[(first.subscribers, first.kind)] = median
        print_scaling_row(first.kind, first.subscribers, median)
    for count in sorted({n for n, _ in medians}):
        same, apart = medians[(count, "identical")], medians[(count, "distinct")]
        cpu = f"{apart[3] / same[3]:.1f}x" if same[3] else "n/a (under a clock tick)"
        print(f"  N = {count}: distinct / identical: gateway CPU per change {cpu}, re-runs per "
              f"change {apart[5]:g} against {same[5]:g}")


def print_settings(args: argparse.Namespace, url: str) -> None:
    with psycopg.connect(url) as conn:
        version, fsync, commit = (conn.execute(f"SHOW {name}").fetchone()[0] for name in
                                  ("server_version", "fsync", "synchronous_commit"))
    print(f"gateway node: {args.workers} workers, debounce {args.debounce_ms} ms, "
          f"max_connections {max_connections(args)} per worker; writer node: 1 worker; "
          f"PostgreSQL {version.split()[0]} (fsync {fsync}, synchronous_commit {commit}); "
          f"this client and both nodes on the same {os.cpu_count()} cores", flush=True)


# -- main ----------------------------------------------------------------------------------------

def raise_open_files_limit(needed: int) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20  # the kernel's usual nr_open
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < needed:
        print(f"warning: the open-files hard limit ({hard}) is below the {needed} needed")


async def run(args: argparse.Namespace, admin_url: str, tmp: Path) -> None:
    url = fresh_database(admin_url, DATABASE)
    runs_file = tmp / "runs"
    runs_file.touch()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DATABASE_URL": url,
           "BENCH_RUNS_FILE": str(runs_file)}
    bench = Bench(args, tmp, url, Meter(url, runs_file), env)
    print_settings(args, url)
    try:
        with node(bench, "writer", 1) as writer:
            bench.writer = HttpConnection(port_of(writer))
            fanned = await fan_out(bench)
            rounds, writes = [], []
            if args.scaling or args.write_seconds:
                with node(bench, "gateway", args.workers) as server:
                    await warm_up(bench, server)
                    rounds = await scaling(bench, server) if args.scaling else []
                    if args.write_seconds:
                        print("\nwriters")
                        writes = await writers(bench, server)
            bench.writer.close()
    finally:
        bench.meter.close()
    report(fanned, rounds, writes)


def numbers(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=numbers, default=[1_000, 10_000],
                        help="fan-out cases: comma-separated counts of identical subscribers")
    parser.add_argument("--changes", type=int, default=20, help="changes per fan-out case")
    parser.add_argument("--scaling", type=numbers, default=[1, 100, 1_000],
                        help="counts for identical against distinct subscriptions ('' skips)")
    parser.add_argument("--scaling-changes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of the scaling and writer parts, alternating the order")
    parser.add_argument("--write-seconds", type=float, default=5,
                        help="seconds per table per round of the writers' part (0 skips)")
    parser.add_argument("--write-connections", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="the gateway node's workers")
    parser.add_argument("--debounce-ms", type=int, default=50)
    args = parser.parse_args()
    raise_open_files_limit(max([*args.subscribers, *args.scaling, 0]) + 1_000)
    with postgres() as admin_url, tempfile.TemporaryDirectory(prefix="forge-live-") as tmp:
        runner: Callable = asyncio.run
        with contextlib.suppress(ImportError):
            import uvloop
            runner = uvloop.run
        runner(run(args, admin_url, Path(tmp)))


if __name__ == "__main__":
    main()
