"""Scheduler failover: from SIGKILL of the leader's node to the first tick the new leader fires.

    python bench/failover.py [--runs 5]

Each run starts a worker-only node (it runs the ticks) and two scheduler-only nodes with a
cron of `every_secs=1, catch_up=True`, waits for the leader's ticks, SIGKILLs every process of
the leader's node, and reads the standby's log for its `leader.elected` and first `cron.tick`
lines. Target: the median under 2 seconds.

The peer in the same run is the floor PostgreSQL itself sets: a second session polling
`pg_try_advisory_lock` every 10 ms, timed from SIGKILL of the process holding the lock to
its acquisition.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime
from pathlib import Path

import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).parent))
from _support import free_port, fresh_database, postgres

BIN = Path(sys.executable).parent
TARGET_SECS = 2.0
CRON_APP = '''
import forge_node as forge

@forge.cron(every_secs=1, catch_up=True)
def tick(ctx):
    pass
'''


class Node:
    def __init__(self, root: Path, url: str, roles: list[str], name: str) -> None:
        root.mkdir()
        (root / "app.py").write_text(CRON_APP)
        (root / "forge.toml").write_text(textwrap.dedent(f'''
            [project]
            name = "failover"
            [database]
            url = "{url}"
            [gateway]
            port = {free_port()}
            [cluster]
            heartbeat_interval_secs = 1
            dead_threshold_secs = 3
            [node]
            roles = {json.dumps(roles)}
        '''))
        self.log = root / "node.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([str(BIN / "forge-node"), "run", "--config",
                                          str(root / "forge.toml")], stdout=out,
                                         stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.name = name

    def events(self, name: str) -> list[dict]:
        found = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == name:
                    found.append(event)
        return found

    def wait_for(self, name: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := self.events(name):
                return found[0]
            time.sleep(0.01)
        raise TimeoutError(f"{self.name}: no {name}")

    def kill_tree(self) -> None:
        try:
            tree = [psutil.Process(self.proc.pid),
                    *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for process in tree:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill_tree()


def stamp(event: dict) -> float:
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


def forge_node_once(url: str, tmp: Path) -> tuple[float, float]:
    nodes = [Node(tmp / "worker", url, ["worker"], "worker")]
    try:
        nodes[0].wait_for("node.ready")
        schedulers = [Node(tmp / f"s{i}", url, ["scheduler"], f"s{i}") for i in range(2)]
        nodes += schedulers
        for node in schedulers:
            node.wait_for("node.ready")
        leader = _wait_any(schedulers)
        leader.wait_for("cron.tick")
        standby = next(n for n in schedulers if n is not leader)
        killed_at = time.time()
        leader.kill_tree()
        elected = standby.wait_for("leader.elected")
        fired = standby.wait_for("cron.tick")
        return stamp(elected) - killed_at, stamp(fired) - killed_at
    finally:
        for node in nodes:
            node.stop()


def _wait_any(schedulers: list[Node]) -> Node:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for node in schedulers:
            if node.events("leader.elected"):
                return node
        time.sleep(0.01)
    raise TimeoutError("no leader")


def raw_lock_once(url: str) -> float:
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f'''
        import psycopg, time
        conn = psycopg.connect({url!r}, autocommit=True)
        conn.execute("SELECT pg_advisory_lock(4242)")
        print("locked", flush=True)
        time.sleep(60)
    ''')], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with psycopg.connect(url, autocommit=True) as conn:
            killed_at = time.monotonic()
            holder.kill()
            while not conn.execute("SELECT pg_try_advisory_lock(4242)").fetchone()[0]:
                time.sleep(0.01)
            acquired = time.monotonic() - killed_at
            conn.execute("SELECT pg_advisory_unlock(4242)")
            return acquired
    finally:
        holder.kill()
        holder.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    elected, fired, floor = [], [], []
    with postgres() as admin_url:
        for run in range(args.runs):
            url = fresh_database(admin_url, f"bench_failover_{run}")
            with tempfile.TemporaryDirectory() as tmp:
                e, f = forge_node_once(url, Path(tmp))
            elected.append(e)
            fired.append(f)
            floor.append(raw_lock_once(url))
            print(f"run {run + 1}: elected after {e:.3f} s, first tick after {f:.3f} s, "
                  f"raw lock handover {floor[-1] * 1000:.1f} ms", flush=True)
    median = statistics.median(fired)
    print(f"\nSIGKILL of the leader's node -> new leader elected: median "
          f"{statistics.median(elected):.3f} s")
    print(f"SIGKILL of the leader's node -> first tick by the new leader: median {median:.3f} s "
          f"(min {min(fired):.3f}, max {max(fired):.3f}) over {len(fired)} runs")
    print(f"raw advisory-lock handover (the floor): median "
          f"{statistics.median(floor) * 1000:.1f} ms")
    print(f"ratio forge-node failover / raw lock handover: "
          f"{median / statistics.median(floor):.1f}x")
    print(f"target: under {TARGET_SECS:.1f} s -> {'PASS' if median < TARGET_SECS else 'FAIL'}")


if __name__ == "__main__":
    main()
