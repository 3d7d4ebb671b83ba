"""What an idle node costs: the CPU of each of its processes and PostgreSQL sessions, and the
statements it sends, while it has nothing to do.

    python bench/idle.py [--seconds 30] [--rounds 3]

Target: one node of the demo app (this repository's forge.toml: every role, the default
settings, `poll_interval_ms = 100`) uses under 1% of a core in its processes together, and
under 1% in its PostgreSQL backends together.

The peers in the same run, idle the same way on a database of their own: a pgqueuer worker
and a procrastinate worker (bench/jobs_peers.py). They are job queues only, where forge-node
runs a gateway and a scheduler too. The contenders take turns in an order that rotates from
round to round; the table shows every round and the medians.

A window starts once the contender is up and its processes have gone quiet (under 5% of a
core for a second: a gunicorn worker may still be importing the app when the node is ready).
CPU is read from /proc: the contender's process tree, and the backends of its database
(those that live through the window). Statements are pg_stat_statements' calls when the
server has it loaded (BENCH_DATABASE_URL at a server with it in shared_preload_libraries),
otherwise the database's transactions: each statement of an autocommit session is one, and
PostgreSQL publishes them about once a second, so short windows are noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).parent))
from _support import (
    descendants,
    free_port,
    fresh_database,
    postgres,
    proc_table,
    stop,
    wait_for_http,
)
from jobs_peers import Collector, PgQueuerSystem, ProcrastinateSystem

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGET = 0.01
QUIET = 0.05


@dataclass
class Sample:
    processes: dict[str, float] = field(default_factory=dict)  # title -> share of a core
    backends: dict[str, float] = field(default_factory=dict)   # application_name -> share
    statements_per_sec: float = 0.0

    @property
    def node(self) -> float:
        return sum(self.processes.values())

    @property
    def database(self) -> float:
        return sum(self.backends.values())


@dataclass
class Contender:
    name: str
    run: Callable[[str, Path], contextlib.AbstractContextManager[None]]
    samples: list[Sample] = field(default_factory=list)


@contextlib.contextmanager
def forge_node(url: str, tmp: Path) -> Iterator[None]:
    """The demo app's node with its default settings (no FORGE_*, OTEL_* or GATEWAY_* set)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FORGE_", "OTEL_", "GATEWAY_", "LOG_"))}
    env.update(DATABASE_URL=url, PORT=str(port), PYTHONUNBUFFERED="1")
    log = tmp / "forge-node.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "forge-node"), "run", "--config",
                                 str(REPO / "forge.toml")], env=env, cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/_api/ready", timeout=60)
        wait_for_event(log, "leader.elected")
        yield
    finally:
        stop(proc, 40)


def wait_for_event(log: Path, event: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{") and json.loads(line).get("event") == event:
                return
        time.sleep(0.05)
    raise TimeoutError(f"no {event} in {log}")


def peer(system_class: type) -> Callable[[str, Path], contextlib.AbstractContextManager[None]]:
    @contextlib.contextmanager
    def run(url: str, tmp: Path) -> Iterator[None]:
        system = system_class()
        system.install(url)
        collector = Collector(tmp)
        try:
            with system.worker(url, collector):
                yield
        finally:
            collector.close()

    return run


class Meter:
    """CPU of this benchmark's child processes and of one database's backends."""

    def __init__(self, admin_url: str) -> None:
        self.admin = psycopg.connect(admin_url, autocommit=True)
        self.statements = self._statement_counter()

    def _statement_counter(self) -> Callable[[str], int]:
        with contextlib.suppress(psycopg.Error):
            self.admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            self.admin.execute("SELECT count(*) FROM pg_stat_statements").fetchone()
            print("statements: pg_stat_statements")
            return lambda db: int(self.admin.execute(
                "SELECT COALESCE(sum(calls), 0) FROM pg_stat_statements s "
                "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s", [db]).fetchone()[0])
        print("statements: transactions of pg_stat_database (no pg_stat_statements)")
        return lambda db: int(self.admin.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            [db]).fetchone()[0])

    def tree(self) -> dict[int, str]:
        procs = proc_table()
        return {pid: _title(pid) for pid in descendants(procs, os.getpid()) - {os.getpid()}}

    def backends(self, db: str) -> dict[int, str]:
        procs = proc_table()
        rows = self.admin.execute("SELECT pid, application_name FROM pg_stat_activity "
                                  "WHERE datname = %s", [db]).fetchall()
        return {pid: name or "(unnamed)" for pid, name in rows
                if pid in procs and procs[pid][1] == "postgres"}

    def wait_quiet(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tree, before, started = self.tree(), proc_table(), time.monotonic()
            time.sleep(1.0)
            if sum(_shares(before, proc_table(), tree, time.monotonic() - started).values()) \
                    < QUIET:
                return
        print("  (did not go quiet within 30 s; measuring anyway)")

    def measure(self, db: str, seconds: float) -> Sample:
        tree, backends = self.tree(), self.backends(db)
        statements = self.statements(db)
        before, started = proc_table(), time.monotonic()
        time.sleep(seconds)
        after, elapsed = proc_table(), time.monotonic() - started
        done = self.statements(db)
        return Sample(_labelled(_shares(before, after, tree, elapsed), tree),
                      _labelled(_shares(before, after, backends, elapsed), backends),
                      (done - statements) / elapsed)

    def close(self) -> None:
        self.admin.close()


def _shares(before: dict, after: dict, pids: dict[int, str], elapsed: float) -> dict[int, float]:
    return {pid: (after[pid][2] - before[pid][2]) / elapsed
            for pid in pids if pid in before and pid in after}


def _labelled(shares: dict[int, float], names: dict[int, str]) -> dict[str, float]:
    """Labels that mean the same in every round: no node ids or pids; repeats numbered."""
    labelled: dict[str, float] = {}
    for pid in sorted(shares):
        name = re.sub(r"pid \d+", "pid *", re.sub(r" [0-9a-f]{8}\b", "", names[pid]))
        label, count = name, 1
        while label in labelled:
            count += 1
            label = f"{name} #{count}"
        labelled[label] = shares[pid]
    return labelled


def _title(pid: int) -> str:
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().split()
    except OSError:
        return str(pid)
    if words and words[0].startswith("forge-node:"):
        return " ".join(words)
    return " ".join(Path(w).name if "/" in w else w for w in words[:4])


def run_round(contenders: list[Contender], meter: Meter, admin_url: str, seconds: float,
              tmp: Path) -> None:
    for contender in contenders:
        db = f"bench_idle_{contender.name}"
        url = fresh_database(admin_url, db)
        folder = tmp / f"{contender.name}-{len(contender.samples)}"
        folder.mkdir()
        with contender.run(url, folder):
            meter.wait_quiet()
            sample = meter.measure(db, seconds)
        contender.samples.append(sample)
        print(f"  {contender.name:<14} processes {sample.node:7.2%}  backends "
              f"{sample.database:7.2%}  statements/s {sample.statements_per_sec:7.1f}")


def report(contenders: list[Contender]) -> None:
    forge = contenders[0]
    print("\nmedians over the rounds (share of one core):")
    for c in contenders:
        node = statistics.median(s.node for s in c.samples)
        database = statistics.median(s.database for s in c.samples)
        rate = statistics.median(s.statements_per_sec for s in c.samples)
        print(f"  {c.name:<14} processes {node:7.2%}  backends {database:7.2%}  "
              f"statements/s {rate:7.1f}")
    print("\nforge-node's processes and sessions, median of the rounds:")
    for part in ("processes", "backends"):
        names = sorted({name for s in forge.samples for name in getattr(s, part)})
        for name in names:
            values = [getattr(s, part).get(name, 0.0) for s in forge.samples]
            print(f"  {statistics.median(values):7.3%}  {name}")
    node = statistics.median(s.node for s in forge.samples)
    database = statistics.median(s.database for s in forge.samples)
    for peer_contender in contenders[1:]:
        peer_node = statistics.median(s.node for s in peer_contender.samples)
        print(f"\nratio of CPU, forge-node's whole node / {peer_contender.name}'s worker: "
              f"{node / peer_node:.2f}" if peer_node else f"\n{peer_contender.name}: no CPU seen")
    verdict = "PASS" if node < TARGET and database < TARGET else "FAIL"
    print(f"\ntarget: node under {TARGET:.0%} and its backends under {TARGET:.0%} of a core: "
          f"{node:.2%} and {database:.2%}: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    contenders = [Contender("forge-node", forge_node),
                  Contender("pgqueuer", peer(PgQueuerSystem)),
                  Contender("procrastinate", peer(ProcrastinateSystem))]
    with postgres() as admin_url, tempfile.TemporaryDirectory() as tmp:
        meter = Meter(admin_url)
        try:
            for round_no in range(args.rounds):
                turn = contenders[round_no % len(contenders):] + \
                    contenders[:round_no % len(contenders)]
                print(f"round {round_no + 1}: {', '.join(c.name for c in turn)}")
                run_round(turn, meter, admin_url, args.seconds, Path(tmp))
        finally:
            meter.close()
    report(contenders)


if __name__ == "__main__":
    main()
