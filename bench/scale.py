"""Scale-out: 1, 2 and 4 worker nodes on one PostgreSQL, on I/O-bound and CPU-light jobs.

    python bench/scale.py [--nodes 1,2,4] [--rounds 3] [--slots 20] [--io-jobs 12000]
                          [--cpu-jobs 60000] [--io-ms 50] [--workloads io,cpu]

Each configuration is N `forge-node run` processes, each its own node (its own node id,
registered in forge_nodes), roles ["worker"] only, `[worker] max_concurrent_jobs = --slots`
and every other setting at its default, on a fresh database of one PostgreSQL (the embedded
one unless BENCH_DATABASE_URL is set). Once all N are active, the benchmark commits the whole
workload in one transaction and times it from that commit (the server's clock) to the last
job's completion (its completed_at):
- io: --io-jobs jobs that each sleep --io-ms (no database work). A node runs at most --slots
  of them at once, so it tops out at slots / io-ms: 400 jobs/s with the default 20 slots and
  50 ms, 1,600 jobs/s for 4 nodes. That ceiling is per node, well under what the machine's
  cores can claim and complete, so the ratio to one node measures what nodes cost each other
  (claims, locks, connections), not the cores. With far more slots one node would be bound
  by CPU instead, and adding nodes to the same machine would only measure the machine.
- cpu: --cpu-jobs jobs with a trivial handler: throughput is bound by CPU (the nodes' and
  PostgreSQL's, on the same cores), so this shows where the machine stops the scale-out.
Both are the same jobs for every N, so a run lasts from a few seconds (cpu) to about 30 s
(io on one node).

Measured during each run:
- sessions: pg_stat_activity of the database sampled every 100 ms, the most seen at once,
  by application_name with the node id left out;
- CPU from /proc over the run: the nodes' process trees; PostgreSQL (the postmaster, its
  backends and the ones it reaped; less the benchmark's own two sessions), when it runs on
  this machine; and the whole machine from /proc/stat (other tenants included; steal apart);
- claims and completions: distinct (node, started_at) and (node, completed_at) of the
  completed jobs, i.e. the claim and complete_jobs statements that moved at least one job;
  statements: the database's transactions (each autocommit statement is one) from just
  before the commit to a second after the end (PostgreSQL publishes them once a second);
- waits: what each active forge-node session was waiting for at each sample
  (wait_event_type:wait_event, "on CPU" for none), and the most ungranted pg_locks at once.
The configurations take turns in an order that rotates from round to round (and the two
workloads swap places every other round); the table gives every round and the medians.
`forge-node status` is captured once, half-way through the first round's first run on the
most nodes (io by default), and printed at the end.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

import forge_node as forge
from forge_node.app import load_app
from forge_node.migrations import Migrator, all_migrations

sys.path.insert(0, str(Path(__file__).parent))
from _support import descendants, free_port, fresh_database, postgres, proc_table
from jobs_peers import PostgresCpu

BIN = Path(sys.executable).parent
DATABASE = "bench_scale"
SAMPLE_SECS = 0.1
POLL_SECS = 0.1
STATS_FLUSH_SECS = 1.2  # backends publish their transaction counts at most once a second
TARGETS = {2: 1.8, 4: 3.5}  # io throughput with N nodes / with one

APP = """
import time

import forge_node as forge


@forge.job
def io(ctx, args):
    time.sleep({io_secs})


@forge.job
def cpu(ctx, args):
    return None
"""
TOML = """
[project]
name = "bench-scale"
[database]
url = "${{DATABASE_URL}}"
[gateway]
port = "${{PORT}}"          # the monitor's health port: one per node
[observability]
log_level = "warning"
[worker]
max_concurrent_jobs = {slots}
[node]
roles = ["worker"]
drain_timeout_secs = 5
"""


@dataclasses.dataclass
class Run:
    workload: str
    nodes: int
    jobs: int = 0
    seconds: float = 0.0
    window: float = 0.0  # the CPU window: from just before the commit to the end seen
    sessions: dict[str, int] = dataclasses.field(default_factory=dict)  # most at once
    node_cpu: float = 0.0  # CPU seconds over the window
    worker_cpu_max: float = 0.0  # the busiest single worker process
    pg_cpu: float | None = None
    machine_cpu: float = 0.0
    steal: float = 0.0
    others: float = 0.0  # the machine's, less the nodes', PostgreSQL's and the benchmark's
    claims: int = 0
    completes: int = 0
    statements: int = 0
    per_node: list[int] = dataclasses.field(default_factory=list)
    waits: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    lock_waits: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    ungranted: int = 0

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    def cores(self, seconds: float | None) -> float | None:
        return None if seconds is None else seconds / self.window

    def ms_per_job(self, seconds: float | None) -> float | None:
        return None if seconds is None else seconds * 1000 / self.jobs


# ------------------------------------------------------------------ the nodes


@contextlib.contextmanager
def worker_nodes(root: Path, url: str, count: int) -> Iterator[list[subprocess.Popen]]:
    """`count` worker-only nodes for the block, entered once all are active; stopped by pid
    (SIGTERM, then SIGKILL after 15 s) whatever happens."""
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        for i in range(count):
            logs.append((root / f"node-{i}.log").open("wb"))
            env = {**os.environ, "DATABASE_URL": url, "PORT": str(free_port()),
                   "PYTHONUNBUFFERED": "1"}
            procs.append(subprocess.Popen(
                [str(BIN / "forge-node"), "run", "--config", str(root / "forge.toml")],
                env=env, cwd=root, stdout=logs[-1], stderr=subprocess.STDOUT))
        wait_active(url, procs)
        yield procs
    finally:
        stop_all(procs)
        for log in logs:
            log.close()


def wait_active(url: str, procs: list[subprocess.Popen], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while conn.execute("SELECT count(*) FROM forge_nodes WHERE status = 'active'"
                           ).fetchone()[0] < len(procs):
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                raise RuntimeError("a worker node exited or did not come up (see its log)")
            time.sleep(0.05)


def stop_all(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to every node first, so their drains overlap; SIGKILL what outlives 15 s."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------ what is measured


ACTIVITY = """
SELECT application_name, state, wait_event_type, wait_event,
       left(regexp_replace(query, '\\s+', ' ', 'g'), 50),
       CASE WHEN wait_event_type = 'Lock' THEN  -- who holds it, only then (it is not free)
           (SELECT left(regexp_replace(b.query, '\\s+', ' ', 'g'), 50) FROM pg_stat_activity b
            WHERE b.pid = (pg_blocking_pids(a.pid))[1]) END
FROM pg_stat_activity a
WHERE datname = %s AND application_name LIKE 'forge-node%%'
  AND application_name <> 'forge-node status'  -- the benchmark's own look
"""


class Sampler:
    """pg_stat_activity and pg_locks every SAMPLE_SECS, on a session of its own."""

    def __init__(self, admin_url: str) -> None:
        self.conn = psycopg.connect(admin_url, autocommit=True)
        self.sessions: dict[str, int] = {}
        self.waits: collections.Counter = collections.Counter()
        self.lock_waits: collections.Counter = collections.Counter()  # by statement
        self.ungranted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.conn.close()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECS):
            self.sample()

    def sample(self) -> None:
        rows = self.conn.execute(ACTIVITY, [DATABASE]).fetchall()
        kinds = collections.Counter(re.sub(r" [0-9a-f]{8}\b", "", row[0]) for row in rows)
        for kind, count in kinds.items():
            self.sessions[kind] = max(self.sessions.get(kind, 0), count)
        self.sessions["all"] = max(self.sessions.get("all", 0), len(rows))
        for _, state, wait_type, wait, query, blocker in rows:
            if state == "active":
                self.waits[f"{wait_type}:{wait}" if wait_type else "on CPU"] += 1
            if wait_type == "Lock":
                self.lock_waits[f"{wait}: {query} | held by: {blocker}"] += 1
        ungranted = self.conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted"
                                      ).fetchone()[0]
        self.ungranted = max(self.ungranted, ungranted)


@dataclasses.dataclass
class Snapshot:
    at: float
    procs: dict[int, tuple[int, str, float]]
    postgres: float | None
    machine: tuple[float, float]  # busy and steal CPU seconds of the whole machine

    @classmethod
    def take(cls, pg: PostgresCpu) -> Snapshot:
        return cls(time.monotonic(), proc_table(), pg.total() if pg.postmaster else None,
                   machine_cpu())


def machine_cpu() -> tuple[float, float]:
    """Busy (steal included) and steal seconds of all cores since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    ticks = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq + steal) / ticks, steal / ticks


def cpu_between(before: Snapshot, after: Snapshot, pids: set[int]) -> float:
    return sum(after.procs[pid][2] - before.procs[pid][2]
               for pid in pids if pid in before.procs and pid in after.procs)


def title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def record_cpu(run: Run, before: Snapshot, after: Snapshot, roots: list[int],
               own_backends: set[int]) -> None:
    """The nodes', PostgreSQL's (less our own sessions) and the machine's CPU seconds."""
    run.window = after.at - before.at
    trees = [descendants(before.procs, root) for root in roots]
    run.node_cpu = sum(cpu_between(before, after, tree) for tree in trees)
    workers = [pid for tree in trees for pid in tree if title(pid).startswith("forge-node: worker")]
    run.worker_cpu_max = max((cpu_between(before, after, {pid}) for pid in workers),
                             default=0.0)
    bench = cpu_between(before, after, {os.getpid()})
    if before.postgres is not None and after.postgres is not None:
        # a remote server's backend pids would name unrelated local processes
        backends = cpu_between(before, after, own_backends)
        run.pg_cpu = after.postgres - before.postgres - backends
        bench += backends
    run.machine_cpu = after.machine[0] - before.machine[0]
    run.steal = after.machine[1] - before.machine[1]
    run.others = run.machine_cpu - run.node_cpu - (run.pg_cpu or 0.0) - bench


def transactions(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                        "WHERE datname = %s", [DATABASE]).fetchone()[0]


RESULT = """
SELECT count(*), extract(epoch FROM max(completed_at) - %s::timestamptz),
       count(DISTINCT (node_id, started_at)), count(DISTINCT (node_id, completed_at))
FROM forge_jobs WHERE status = 'completed'
"""


def record_jobs(run: Run, conn: psycopg.Connection, committed_at: object) -> None:
    run.jobs, seconds, run.claims, run.completes = conn.execute(RESULT, [committed_at]
                                                                ).fetchone()
    run.seconds = float(seconds)
    run.per_node = sorted(n for (n,) in conn.execute(
        "SELECT count(*) FROM forge_jobs WHERE status = 'completed' GROUP BY node_id"))


# ------------------------------------------------------------------ one run


class Bench:
    def __init__(self, admin_url: str, root: Path, args: argparse.Namespace) -> None:
        self.admin_url = admin_url
        self.root = root
        self.args = args
        self.status_text = ""

    def run(self, workload: str, nodes: int, capture_status: bool) -> Run:
        url = fresh_database(self.admin_url, DATABASE)
        Migrator(url, all_migrations(self.root)).up()
        jobs = self.args.io_jobs if workload == "io" else self.args.cpu_jobs
        run = Run(workload, nodes)
        with worker_nodes(self.root, url, nodes) as procs, \
                psycopg.connect(url, autocommit=True) as conn, \
                psycopg.connect(self.admin_url, autocommit=True) as admin, \
                Sampler(self.admin_url) as sampler:
            own = {conn.info.backend_pid, sampler.conn.info.backend_pid}
            pg = PostgresCpu(url)
            statements = transactions(admin)
            with conn.transaction():  # the workload is queued before the window opens
                forge.enqueue_many(conn, workload, [{}] * jobs)
                before = Snapshot.take(pg)
            committed_at = conn.execute("SELECT clock_timestamp()").fetchone()[0]
            polls = self.wait_done(url, conn, procs, jobs, capture_status)
            after = Snapshot.take(pg)
            record_cpu(run, before, after, [p.pid for p in procs], own)
            record_jobs(run, conn, committed_at)
            # an idle session holds back what it did within a second of its last report for
            # 10 s: have ours report when it goes idle, give the nodes' theirs a second
            conn.execute("SELECT pg_stat_force_next_flush()")
            time.sleep(STATS_FLUSH_SECS)
            # our own statements on this database: the enqueue, the clock, the polls, the
            # two of record_jobs and the flush
            run.statements = transactions(admin) - statements - polls - 5
        run.sessions, run.waits, run.ungranted = sampler.sessions, sampler.waits, \
            sampler.ungranted
        run.lock_waits = sampler.lock_waits
        return run

    def wait_done(self, url: str, conn: psycopg.Connection, procs: list[subprocess.Popen],
                  jobs: int, capture_status: bool) -> int:
        """Poll until no job is pending or running; return how many polls that took."""
        status: subprocess.Popen | None = None
        polls = 0
        deadline = time.monotonic() + self.args.timeout
        try:
            while True:
                polls += 1
                left = conn.execute("SELECT count(*) FROM forge_jobs "
                                    "WHERE status IN ('pending', 'running')").fetchone()[0]
                if left == 0:
                    break
                if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                    raise RuntimeError(f"{left} of {jobs} jobs not done: a node exited or "
                                       f"--timeout ({self.args.timeout} s) passed")
                if capture_status and status is None and left <= jobs // 2:
                    status = self.start_status(url)
                time.sleep(POLL_SECS)
            if status is not None:
                self.status_text = status.communicate(timeout=60)[0]
        finally:
            if status is not None and status.poll() is None:
                status.kill()
                status.wait()
        return polls

    def start_status(self, url: str) -> subprocess.Popen:
        """`forge-node status` in the background, so the run's timing does not wait for it."""
        env = {**os.environ, "DATABASE_URL": url, "PORT": "8080"}
        return subprocess.Popen([str(BIN / "forge-node"), "status", "--config",
                                 str(self.root / "forge.toml")], env=env, cwd=self.root,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# ------------------------------------------------------------------ printing


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def run_line(run: Run) -> str:
    return (f"{run.workload:<3} {run.nodes} node{'s' if run.nodes > 1 else ' '} "
            f"{run.jobs:>7,} jobs {run.seconds:6.2f} s {run.rate:8,.1f} jobs/s  "
            f"sessions {run.sessions.get('all', 0):2}  cores: nodes "
            f"{fmt(run.cores(run.node_cpu), '.2f')} (busiest worker "
            f"{fmt(run.cores(run.worker_cpu_max), '.2f')}) PostgreSQL "
            f"{fmt(run.cores(run.pg_cpu), '.2f')} machine {fmt(run.cores(run.machine_cpu), '.2f')}"
            f" (others {run.cores(run.others):.2f}, steal {run.cores(run.steal):.2f})  "
            f"jobs per node "
            f"{'/'.join(map(str, run.per_node))}")


def print_summary(workload: str, by_nodes: dict[int, list[Run]]) -> None:
    print(f"\n{workload}: jobs/s, the median of the rounds; the other figures from the median "
          f"run (CPU in cores over its wall time, and ms per job)")
    print(f"{'nodes':>5} {'jobs/s':>8} {'x 1 node':>8}  {'every round':<26} {'sessions':>8} "
          f"{'node cores':>10} {'ms/job':>6} {'PG cores':>8} {'ms/job':>6} {'machine':>7} "
          f"{'others':>6} {'claims/job':>10} {'completes/job':>13} {'stmts/job':>9}")
    base = statistics.median(r.rate for r in by_nodes.get(1, [])) if 1 in by_nodes else None
    for nodes, runs in sorted(by_nodes.items()):
        rate = statistics.median(r.rate for r in runs)
        pick = sorted(runs, key=lambda r: r.rate)[len(runs) // 2]  # the median run's figures
        print(f"{nodes:>5} {rate:8,.1f} {fmt(base and rate / base, '7.2f')}x  "
              f"{' '.join(f'{r.rate:,.1f}' for r in runs):<26} "
              f"{max(r.sessions.get('all', 0) for r in runs):>8} "
              f"{pick.cores(pick.node_cpu):10.2f} {pick.ms_per_job(pick.node_cpu):6.3f} "
              f"{fmt(pick.cores(pick.pg_cpu), '8.2f')} "
              f"{fmt(pick.ms_per_job(pick.pg_cpu), '6.3f')} "
              f"{pick.cores(pick.machine_cpu):7.2f} {pick.cores(pick.others):6.2f} "
              f"{pick.claims / pick.jobs:10.3f} "
              f"{pick.completes / pick.jobs:13.3f} {pick.statements / pick.jobs:9.3f}")


def print_sessions_and_waits(workload: str, by_nodes: dict[int, list[Run]]) -> None:
    print(f"\n{workload}: sessions (most at once, by application_name) and what active "
          f"forge-node sessions waited on (all rounds' samples)")
    for nodes, runs in sorted(by_nodes.items()):
        kinds = sorted({k for r in runs for k in r.sessions if k != "all"})
        sessions = ", ".join(f"{max(r.sessions.get(k, 0) for r in runs)} {k}" for k in kinds)
        waits = sum((r.waits for r in runs), collections.Counter())
        total = sum(waits.values()) or 1
        seen = ", ".join(f"{w} {n / total:.0%}" for w, n in waits.most_common(5))
        print(f"  {nodes} node{'s' if nodes > 1 else ''}: {sessions}")
        print(f"     {total} active samples: {seen or 'none'}; ungranted pg_locks at once: "
              f"at most {max(r.ungranted for r in runs)}")
        for statement, count in sum((r.lock_waits for r in runs), collections.Counter()
                                    ).most_common(3):
            print(f"     waiting on a lock in {count} samples: {statement}")


def print_targets(by_nodes: dict[int, list[Run]]) -> None:
    if 1 not in by_nodes:
        return
    base = statistics.median(r.rate for r in by_nodes[1])
    for nodes, target in TARGETS.items():
        if nodes in by_nodes:
            ratio = statistics.median(r.rate for r in by_nodes[nodes]) / base
            verdict = "PASS" if ratio >= target else "FAIL"
            print(f"target: io with {nodes} nodes >= {target}x one node -> {verdict} "
                  f"({ratio:.2f}x)")


# ------------------------------------------------------------------ main


def prepare(root: Path, args: argparse.Namespace) -> None:
    (root / "app.py").write_text(APP.format(io_secs=args.io_ms / 1000))
    (root / "forge.toml").write_text(TOML.format(slots=args.slots))
    load_app(root, "app")  # enqueue checks job names against the app's registry


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="1,2,4", help="node counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slots", type=int, default=20, help="max_concurrent_jobs per node")
    parser.add_argument("--io-jobs", type=int, default=12_000)
    parser.add_argument("--cpu-jobs", type=int, default=60_000)
    parser.add_argument("--io-ms", type=float, default=50, help="how long an io job waits")
    parser.add_argument("--timeout", type=float, default=300, help="seconds a run may take")
    parser.add_argument("--workloads", default="io,cpu")
    args = parser.parse_args()
    args.node_counts = [int(n) for n in args.nodes.split(",")]
    args.workload_names = [w for w in args.workloads.split(",") if w]
    if not args.workload_names or set(args.workload_names) - {"io", "cpu"}:
        parser.error("--workloads: io, cpu or both")
    return args


def main() -> None:
    args = parse_args()
    # SIGTERM unwinds like Ctrl-C, so the nodes and the embedded server are stopped on the way
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    results: dict[str, dict[int, list[Run]]] = {name: {} for name in args.workload_names}
    load = Path("/proc/loadavg").read_text().split()[:3]
    with postgres() as admin_url, tempfile.TemporaryDirectory(prefix="forge-scale-") as tmp:
        prepare(Path(tmp), args)
        bench = Bench(admin_url, Path(tmp), args)
        with psycopg.connect(admin_url) as conn:
            server = conn.execute("SHOW server_version").fetchone()[0]
        for round_no in range(args.rounds):
            shift = round_no % len(args.node_counts)
            order = args.node_counts[shift:] + args.node_counts[:shift]
            workloads = args.workload_names if round_no % 2 == 0 else \
                args.workload_names[::-1]
            print(f"round {round_no + 1}: {', '.join(workloads)}; nodes "
                  f"{', '.join(map(str, order))}", flush=True)
            for workload in workloads:
                for nodes in order:
                    capture = round_no == 0 and workload == workloads[0] and \
                        nodes == max(args.node_counts)
                    run = bench.run(workload, nodes, capture)
                    results[workload].setdefault(nodes, []).append(run)
                    print(f"  {run_line(run)}", flush=True)
    print(f"\nworker-only nodes, {args.slots} slots each (io ceiling "
          f"{args.slots * 1000 / args.io_ms:,.0f} jobs/s per node), every other setting at its "
          f"default; PostgreSQL {server}; {os.cpu_count()} cores; load average before "
          f"{' '.join(load)}; {args.rounds} rounds")
    print(f"io: {args.io_jobs:,} jobs that each sleep {args.io_ms:g} ms; cpu: "
          f"{args.cpu_jobs:,} jobs with a trivial handler")
    for workload, by_nodes in results.items():
        print_summary(workload, by_nodes)
        print_sessions_and_waits(workload, by_nodes)
    print(f"\n`forge-node status`, half-way through round 1's {args.workload_names[0]} run on "
          f"{max(args.node_counts)} nodes:\n{bench.status_text}")
    if "io" in results:
        print_targets(results["io"])


if __name__ == "__main__":
    main()
