"""Job queue: forge-node's against pgqueuer, procrastinate and a raw-SQL ceiling, in one run.

    python bench/jobs.py [--jobs 20000] [--systems forge-node,raw10,raw100,pgqueuer,procrastinate]
                         [--pickup-rate 20] [--pickup-secs 10] [--enqueue-batch 100] [--rounds 1]
                         [--warm-up 0]

The peers come from the [bench] extra (pip install -e '.[bench]'); see bench/jobs_peers.py for
how each is set up. For every system, each on fresh databases of the same PostgreSQL:
- batched enqueue: --jobs jobs in transactions of --enqueue-batch with the system's batch
  API, no worker running (a database of its own);
- end-to-end throughput: one worker node up first (listening for jobs, none run yet), then
  --jobs no-op jobs committed in one transaction, timed from that commit until all are
  completed. --warm-up N first runs N jobs through the node, as in one that has been running:
  its prepared statements then get planned on a near-empty queue (pgqueuer 1.6 then scans
  its whole queue once per batch of the burst: about half as much PostgreSQL CPU per job
  again, 10-20% less throughput);
- PostgreSQL CPU per job over that same window: user + system time of the server's processes
  from /proc (postmaster, live backends, and reaped ones through the postmaster's cutime);
- pickup latency: single jobs committed at --pickup-rate per second for --pickup-secs, from
  each enqueue's commit to its handler's start (p50/p99).
Ratios are each system's throughput over pgqueuer's in the same run. With --rounds N the
systems take turns N times and each figure is the median over the rounds.

The PostgreSQL is the embedded one (16, unix socket) unless BENCH_DATABASE_URL is set. The
issue's reference figures are on Debian's PostgreSQL 15, run as a non-root user, e.g.:

    useradd -m pgbench 2>/dev/null; su pgbench -c '/usr/lib/postgresql/15/bin/initdb -D
      /tmp/pg15 -U postgres -A trust && /usr/lib/postgresql/15/bin/pg_ctl -D /tmp/pg15 -l
      /tmp/pg15/log -o "-k /tmp/pg15 -c listen_addresses=" start'
    BENCH_DATABASE_URL='postgresql://postgres@/postgres?host=/tmp/pg15' python bench/jobs.py
    su pgbench -c '/usr/lib/postgresql/15/bin/pg_ctl -D /tmp/pg15 stop'
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg

import forge_node as forge
from forge_node.app import load_app
from forge_node.migrations import Migrator, all_migrations

sys.path.insert(0, str(Path(__file__).parent))
from _support import free_port, fresh_database, postgres
from jobs_peers import (
    PEERS,
    PROBE_ENV,
    Collector,
    JobClient,
    JobSystem,
    PostgresCpu,
    measure_enqueue,
    measure_pickup,
    measure_throughput,
    spawn_worker,
    warm_up,
)

TARGET_RATIO = 1.5  # x pgqueuer's end-to-end throughput
TARGET_CPU_MS = 0.15
TARGET_P50_MS = 2.0
TARGET_P99_MS = 10.0
TARGET_ENQUEUE = 15_000


# ------------------------------------------------------------------------------------------
# forge-node: one more JobSystem (see bench/jobs_peers.py for the contract). The node runs
# the worker role with its defaults (one pool of 20 slots, NOTIFY wake-up, 100 ms polls);
# the bench enqueues with forge.enqueue / forge.enqueue_many on its own connection.

FORGE_APP = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
import forge_node as forge
from jobs_peers import Probe

_probe = []


@forge.job
def noop(ctx, args):
    if not _probe:  # built in the worker process, after the fork
        _probe.append(Probe.from_env())
    _probe[0].hit(args["k"])
"""
FORGE_TOML = """
[project]
name = "bench-jobs"
[database]
url = "${{DATABASE_URL}}"
[gateway]
port = {port}
[observability]
log_level = "warning"
[node]
roles = ["worker"]
"""


class ForgeNodeClient(JobClient):
    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def enqueue_txn(self, keys: list[int]) -> None:
        with self.conn.transaction():
            forge.enqueue_many(self.conn, "noop", [{"k": k} for k in keys])

    def enqueue_one(self, key: int) -> float:
        forge.enqueue(self.conn, "noop", {"k": key})
        return time.time()

    def enqueue_batches(self, keys: list[int], batch: int) -> None:
        for i in range(0, len(keys), batch):
            forge.enqueue_many(self.conn, "noop", [{"k": k} for k in keys[i:i + batch]])

    def remaining(self) -> int:
        return self.conn.execute(
            "SELECT count(*) FROM forge_jobs WHERE status <> 'completed'").fetchone()[0]


class ForgeNodeSystem(JobSystem):
    name = "forge-node"

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="forge-bench-app-"))
        (self.root / "app.py").write_text(FORGE_APP)
        (self.root / "forge.toml").write_text(FORGE_TOML.format(port=free_port()))
        load_app(self.root, "app")  # enqueue checks job names against the app's registry

    def install(self, url: str) -> None:
        Migrator(url, all_migrations(self.root)).up()

    @contextlib.contextmanager
    def client(self, url: str) -> Iterator[JobClient]:
        with psycopg.connect(url, autocommit=True) as conn:
            yield ForgeNodeClient(conn)

    @contextlib.contextmanager
    def worker(self, url: str, collector: Collector) -> Iterator[Callable[[], bool]]:
        argv = [str(Path(sys.executable).with_name("forge-node")), "run", "--config",
                str(self.root / "forge.toml")]
        env = {"DATABASE_URL": url, PROBE_ENV: collector.address}
        with spawn_worker(argv, env) as alive, psycopg.connect(url, autocommit=True) as conn:
            deadline = time.monotonic() + 60
            while conn.execute("SELECT count(*) FROM forge_nodes WHERE status = 'active'"
                               ).fetchone()[0] == 0:  # every role up: it takes jobs
                if not alive() or time.monotonic() > deadline:
                    raise RuntimeError("the forge-node worker did not come up")
                time.sleep(0.05)
            yield alive
# ------------------------------------------------------------------------------------------


SYSTEMS = {"forge-node": ForgeNodeSystem, **PEERS}


@dataclasses.dataclass
class Row:
    name: str
    throughput: float | None = None  # jobs/s, end to end
    cpu_ms: float | None = None  # PostgreSQL CPU ms per job
    p50: float | None = None
    p99: float | None = None
    enqueue: float | None = None  # jobs/s, batched
    note: str = ""


def run_system(name: str, admin_url: str, collector: Collector,
               args: argparse.Namespace) -> Row:
    row = Row(name)
    slug = name.replace("-", "_")
    try:
        system = SYSTEMS[name]()
        url = fresh_database(admin_url, f"bench_jobs_{slug}_enqueue")
        system.install(url)
        with system.client(url) as client:
            row.enqueue = measure_enqueue(client, args.jobs, args.enqueue_batch)
        url = fresh_database(admin_url, f"bench_jobs_{slug}")
        system.install(url)
        cpu = PostgresCpu(url)
        with system.client(url) as client, system.worker(url, collector) as alive:
            if args.warm_up:
                warm_up(client, collector, alive, args.warm_up)
            row.throughput, row.cpu_ms = measure_throughput(client, collector, alive, cpu,
                                                            args.jobs)
            row.p50, row.p99 = measure_pickup(client, collector, alive, args.pickup_rate,
                                              args.pickup_secs)
    except ImportError as exc:
        row.note = f"not installed ({exc.name}): pip install -e '.[bench]'"
    except Exception as exc:
        traceback.print_exc()
        row.note = f"failed: {exc}"
    return row


def median_row(name: str, rows: list[Row]) -> Row:
    """Each figure's median over the rounds that produced it."""
    merged = Row(name, note="; ".join(sorted({r.note for r in rows if r.note})))
    for field in ("throughput", "cpu_ms", "p50", "p99", "enqueue"):
        values = [getattr(r, field) for r in rows if getattr(r, field) is not None]
        setattr(merged, field, statistics.median(values) if values else None)
    return merged


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_table(rows: list[Row], base: float | None) -> None:
    print(f"{'system':<14} {'e2e jobs/s':>10} {'x pgqueuer':>10} {'PG CPU ms/job':>13} "
          f"{'pickup p50 ms':>13} {'p99 ms':>7} {'enqueue jobs/s':>14}")
    for r in rows:
        print(row_text(r, base))


def row_text(r: Row, base: float | None) -> str:
    if r.note and r.throughput is None and r.enqueue is None:
        return f"{r.name:<14} {r.note}"
    ratio = r.throughput / base if base and r.throughput else None
    ratio_text = "n/a" if ratio is None else f"{ratio:.2f}x"
    return (f"{r.name:<14} {_fmt(r.throughput, '10,.0f')} {ratio_text:>10} "
            f"{_fmt(r.cpu_ms, '13.3f')} {_fmt(r.p50, '13.1f')} {_fmt(r.p99, '7.1f')} "
            f"{_fmt(r.enqueue, '14,.0f')}" + (f"  {r.note}" if r.note else ""))


def print_targets(forge: Row, base: float | None) -> None:
    checks = [
        (f"end-to-end >= {TARGET_RATIO}x pgqueuer", forge.throughput and base
         and forge.throughput / base, lambda v: v >= TARGET_RATIO, ".2f"),
        (f"PG CPU <= {TARGET_CPU_MS} ms/job", forge.cpu_ms, lambda v: v <= TARGET_CPU_MS,
         ".3f"),
        (f"pickup p50 <= {TARGET_P50_MS} ms", forge.p50, lambda v: v <= TARGET_P50_MS, ".1f"),
        (f"pickup p99 <= {TARGET_P99_MS} ms", forge.p99, lambda v: v <= TARGET_P99_MS, ".1f"),
        (f"batched enqueue >= {TARGET_ENQUEUE:,} jobs/s", forge.enqueue,
         lambda v: v >= TARGET_ENQUEUE, ",.0f"),
    ]
    for label, value, ok, spec in checks:
        verdict = "n/a" if not value else ("PASS" if ok(value) else "FAIL")
        print(f"target: {label} -> {verdict}" + (f" ({value:{spec}})" if value else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--pickup-rate", type=float, default=20)
    parser.add_argument("--pickup-secs", type=float, default=10)
    parser.add_argument("--enqueue-batch", type=int, default=100)
    parser.add_argument("--warm-up", type=int, default=0,
                        help="jobs each worker node runs before the timed burst")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every system this many times (alternating); report medians")
    args = parser.parse_args()
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems {unknown}; known: {','.join(SYSTEMS)}")
    runs: dict[str, list[Row]] = {name: [] for name in names}
    with postgres() as admin_url, tempfile.TemporaryDirectory() as tmp:
        collector = Collector(Path(tmp))
        try:
            for round_no in range(1, args.rounds + 1):
                for name in names:
                    if round_no > 1 and runs[name][-1].note.startswith("not "):
                        continue  # not available / not installed: no use asking again
                    print(f"round {round_no}: {name} ...", file=sys.stderr, flush=True)
                    runs[name].append(run_system(name, admin_url, collector, args))
                    print(f"  {row_text(runs[name][-1], None)}", file=sys.stderr, flush=True)
        finally:
            collector.close()
    rows = [median_row(name, rows) for name, rows in runs.items()]
    print(f"{args.jobs:,} no-op jobs, one worker node; pickup at {args.pickup_rate:g} jobs/s "
          f"for {args.pickup_secs:g} s; enqueue in batches of {args.enqueue_batch}; "
          f"warm-up {args.warm_up} jobs; median of {args.rounds} round(s)")
    base = next((r.throughput for r in rows if r.name == "pgqueuer" and r.throughput), None)
    print_table(rows, base)
    forge = next((r for r in rows if r.name == "forge-node" and r.throughput), None)
    if forge:
        print_targets(forge, base)


if __name__ == "__main__":
    main()
