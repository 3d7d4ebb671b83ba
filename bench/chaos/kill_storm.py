"""Kill storm: three nodes share a queue of jobs and a steady HTTP load while, every 1-2 s, a
random child or a whole node is SIGKILLed and comes back.

    python bench/chaos/kill_storm.py [--jobs 5000] [--job-ms 200] [--rps 60] [--seed N] [--json]
    python bench/chaos/kill_storm.py --calm      # the same without kills: the drain time's peer

Each node runs every role (gateway, worker, scheduler). A kill picks, in a shuffled round of
five kinds, one of: the gateway, worker or scheduler child of a node (its supervisor restarts
it), the supervisor alone (its children get SIGTERM from PR_SET_PDEATHSIG and drain), or every
process of a node at once (a machine lost). A node whose supervisor died is started again by
this script once its old processes are gone, on the same port.

Every job appends `job attempt pid` to a file before it works (outside any transaction) and
inserts the same into a side table in its own transaction: the file counts every execution,
committed or not. Right after each kill of a worker or a node, the jobs the database still
shows running on that node are recorded: those were in flight at the kill. At the end: every
job completed, none running; a job ran more than once only if it was in flight at a kill, and
no more often than the kills that caught it; every HTTP failure lies within an outage of its
own node's gateway (from its kill to the first request sent to it afterwards that succeeded).
BENCH_DATABASE_URL points it at an existing server; otherwise it starts an embedded one.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _support import free_port, fresh_database, postgres

FORGE_NODE = str(Path(sys.executable).with_name("forge-node"))
KINDS = ("gateway", "worker", "scheduler", "supervisor", "node")
GATEWAY_KILLS = {"gateway", "supervisor", "node"}
JOB_KILLS = {"worker", "supervisor", "node"}
OLD_TREE_GRACE_SECS = 15  # a drained child outlives its SIGKILLed supervisor by the drain timeout

APP = '''
import os
import time

import forge_node as forge


@forge.query(public=True)
def ping(ctx, args):
    ctx.db.execute("SELECT 1")
    return os.getpid()  # which gateway worker answered: an old one, or one started anew


@forge.job(max_attempts=100)
def work(ctx, args):
    # appended before any work and outside the job's transaction: an execution cut short by a
    # kill is counted too (one O_APPEND write, so lines of different processes never mix)
    fd = os.open(os.environ["KILL_STORM_EXECUTIONS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{ctx.job_id} {ctx.attempt} {os.getpid()}\\n".encode())
    os.close(fd)
    time.sleep(args["secs"])
    ctx.db.execute("INSERT INTO executions (job_id, attempt, pid) VALUES (%s, %s, %s)",
                   [ctx.job_id, ctx.attempt, os.getpid()])
'''
MIGRATION = """
CREATE TABLE executions (job_id bigint NOT NULL, attempt int NOT NULL, pid int NOT NULL);
"""


def config(url: str, port: int, slots: int) -> str:
    return textwrap.dedent(f'''
        [project]
        name = "kill-storm"
        app = "app"
        [database]
        url = "{url}"
        [gateway]
        port = {port}
        workers = 1
        threads = 4
        [worker]
        max_concurrent_jobs = {slots}
        [cluster]
        # 2 s (heartbeat 0.5 s) once declared a live node dead on this loaded 2-core machine,
        # and its running jobs ran twice without any kill
        heartbeat_interval_secs = 1
        dead_threshold_secs = 5
        [node]
        roles = ["gateway", "function", "worker", "scheduler"]
        drain_timeout_secs = 5
    ''')


@dataclass
class Kill:
    at: float  # time.monotonic()
    slot: int
    kind: str
    node_pids: set[int]  # the node's processes just before the kill
    in_flight: list[int] = field(default_factory=list)  # job ids running on it at the kill


@dataclass
class Request:
    slot: int
    sent: float
    ended: float
    error: str | None
    served_by: int | None  # the gateway worker's pid, on success


class NodeSlot:
    """One of the three nodes: a folder and a port that every incarnation of it reuses."""

    def __init__(self, index: int, root: Path, url: str, executions: Path, slots: int) -> None:
        self.index = index
        self.root = root
        self.port = free_port()
        (root / "migrations").mkdir(parents=True)
        (root / "migrations" / "0001_executions.sql").write_text(MIGRATION)
        (root / "app.py").write_text(APP)
        (root / "forge.toml").write_text(config(url, self.port, slots))
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1",
                    "KILL_STORM_EXECUTIONS": str(executions)}
        self.env.pop("NOTIFY_SOCKET", None)
        self.incarnation = 0
        self.proc: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.root / f"node-{self.incarnation}.log"

    def start(self) -> None:
        self.incarnation += 1
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [FORGE_NODE, "run", "--config", str(self.root / "forge.toml")],
                stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.root)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if '"event": "node.ready"' in self.log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"node {self.index} not ready:\n{self.log.read_text()[-3000:]}")

    def child(self, role: str) -> psutil.Process | None:
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return None
        for process in children:
            try:
                if " ".join(process.cmdline()).strip() == f"forge-node: {role}":
                    return process
            except psutil.NoSuchProcess:
                continue
        return None

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        """SIGTERM the supervisor (it drains its children), SIGKILL whatever outlives it."""
        tree = self.tree()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        kill_all(tree)
        if self.proc is not None:
            self.proc.wait()


def kill_all(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=5)


class HttpLoad(threading.Thread):
    """Calls `ping` on one node at a steady pace, on a keep-alive connection."""

    def __init__(self, slot: NodeSlot, rps: float, stopping: threading.Event) -> None:
        super().__init__(daemon=True)
        self.slot = slot
        self.pause = 1 / rps
        self.stopping = stopping
        self.requests: list[Request] = []
        self.conn: http.client.HTTPConnection | None = None

    def run(self) -> None:
        while not self.stopping.is_set():
            sent = time.monotonic()
            error, pid = self.call()
            self.requests.append(Request(self.slot.index, sent, time.monotonic(), error, pid))
            self.stopping.wait(max(0.0, self.pause - (time.monotonic() - sent)))
        if self.conn is not None:
            self.conn.close()

    def call(self) -> tuple[str | None, int | None]:
        """(the error, or None; the pid of the gateway worker that answered)"""
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.slot.port, timeout=5)
            self.conn.request("POST", "/_api/rpc/ping", body=b'{"args": {}}',
                              headers={"Content-Type": "application/json"})
            resp = self.conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                return f"status {resp.status}", None
            return None, json.loads(body)["data"]
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return type(exc).__name__, None


class Storm:
    """Kills a process every 1-2 s until the queue is drained; brings killed nodes back."""

    def __init__(self, nodes: list[NodeSlot], url: str, rng: random.Random) -> None:
        self.nodes = nodes
        self.db = psycopg.connect(url, autocommit=True)
        self.rng = rng
        self.kills: list[Kill] = []
        self.restarting: set[int] = set()
        self.restarters: list[threading.Thread] = []
        self.kinds: list[str] = []
        self.over = threading.Event()
        self.killer = threading.Thread(target=self.run, daemon=True)

    def start(self) -> None:
        self.killer.start()

    def run(self) -> None:
        while not self.over.wait(self.rng.uniform(1.0, 2.0)):
            self.kill_one()

    def next_kind(self) -> str:
        """Kinds come in shuffled rounds, so that a short storm still sees each of them."""
        if not self.kinds:
            self.kinds = self.rng.sample(KINDS, len(KINDS))
        return self.kinds.pop()

    def kill_one(self) -> None:
        kind = self.next_kind()
        candidates = [n for n in self.nodes if n.index not in self.restarting]
        for node in self.rng.sample(candidates, len(candidates)):
            target = self.target(node, kind)
            if target is not None:
                self.kill(node, kind, target)
                return

    def target(self, node: NodeSlot, kind: str) -> psutil.Process | None:
        if kind in ("supervisor", "node"):
            return psutil.Process(node.proc.pid)
        return node.child(kind)  # None while its supervisor is restarting it

    def kill(self, node: NodeSlot, kind: str, target: psutil.Process) -> None:
        node_id = self.node_id(node)
        tree = node.tree()  # before the kill: a dead supervisor's children are reparented
        at = time.monotonic()
        kill_all(tree if kind == "node" else [target])
        # the dead process can change nothing more: what still runs on its node was in flight
        # (a SIGKILLed supervisor's worker drains instead, and claims nothing more)
        in_flight = self.running_jobs(node_id) if kind in JOB_KILLS else []
        self.kills.append(Kill(at, node.index, kind, {p.pid for p in tree}, in_flight))
        if kind in ("supervisor", "node"):
            self.bring_back(node, tree)

    def node_id(self, node: NodeSlot) -> str | None:
        row = self.db.execute("SELECT id::text FROM forge_nodes WHERE pid = %s "
                              "ORDER BY started_at DESC LIMIT 1", [node.proc.pid]).fetchone()
        return row and row[0]

    def running_jobs(self, node_id: str | None) -> list[int]:
        return [r[0] for r in self.db.execute(
            "SELECT id FROM forge_jobs WHERE status = 'running' AND node_id::text = %s",
            [node_id])]

    def bring_back(self, node: NodeSlot, old_tree: list[psutil.Process]) -> None:
        self.restarting.add(node.index)
        thread = threading.Thread(target=self.restart, args=(node, old_tree), daemon=True)
        self.restarters.append(thread)
        thread.start()

    def restart(self, node: NodeSlot, old_tree: list[psutil.Process]) -> None:
        """Once the old processes are gone (the port is free again), start the node anew."""
        node.proc.wait()
        _, alive = psutil.wait_procs(old_tree, timeout=OLD_TREE_GRACE_SECS)
        kill_all(alive)
        if self.over.is_set():
            return  # nothing more to start: the caller stops the nodes
        node.start()
        node.wait_ready()
        self.restarting.discard(node.index)

    def stop(self) -> None:
        """No more kills; wait for nodes being started again (stopped with the others)."""
        self.over.set()
        for thread in [self.killer, *self.restarters]:
            if thread.is_alive():
                thread.join(90)
        self.db.close()


def enqueue(nodes: list[NodeSlot], url: str, count: int, secs: float) -> None:
    from forge_node import enqueue_many
    from forge_node.app import load_app
    load_app(nodes[0].root, "app")
    with psycopg.connect(url, autocommit=True) as conn:
        enqueue_many(conn, "work", [{"secs": secs}] * count)


def wait_drained(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            left = conn.execute("SELECT count(*) FROM forge_jobs "
                                "WHERE status IN ('pending', 'running')").fetchone()[0]
            if left == 0:
                return
            time.sleep(0.1)
    raise TimeoutError(f"{left} jobs still pending or running after {timeout:.0f} s")


def job_figures(url: str, executions: Path, kills: list[Kill]) -> dict:
    with psycopg.connect(url, autocommit=True) as conn:
        states = dict(conn.execute("SELECT status, count(*) FROM forge_jobs GROUP BY 1"))
        committed = Counter(r[0] for r in conn.execute("SELECT job_id FROM executions"))
    ran = Counter(int(line.split()[0]) for line in executions.read_text().splitlines())
    caught = Counter(job for kill in kills for job in kill.in_flight)
    extra = {job: n - 1 for job, n in ran.items() if n > 1}
    unexplained = {job: n for job, n in extra.items() if n > caught[job]}
    return {"jobs": sum(states.values()), "states": states, "executions": sum(ran.values()),
            "never_ran": sum(states.values()) - len(ran),
            "duplicates": sum(extra.values()),
            "committed_duplicates": sum(n - 1 for n in committed.values() if n > 1),
            "in_flight_at_kills": sum(caught.values()),
            "unexplained_duplicates": sum(unexplained.values()),
            "unexplained_duplicate_jobs": sorted(unexplained)[:20]}


def outages(kills: list[Kill], requests: list[Request]) -> list[tuple[Kill, float]]:
    """Each kill of a gateway, with the send time of the first request to that node after it
    that a new gateway worker answered (the end of the outage; infinity if none did). An old
    worker may go on answering for a moment after its master or supervisor died."""
    found = []
    for kill in kills:
        if kill.kind in GATEWAY_KILLS:
            back = min((r.sent for r in requests if r.slot == kill.slot and r.sent >= kill.at
                        and r.error is None and r.served_by not in kill.node_pids),
                       default=float("inf"))
            found.append((kill, back))
    return found


def http_figures(kills: list[Kill], requests: list[Request], started: float) -> dict:
    windows = outages(kills, requests)
    explained: Counter = Counter()
    unexplained = []
    for req in (r for r in requests if r.error is not None):
        cause = next((k for k, back in windows if k.slot == req.slot and k.at <= req.ended
                      and req.sent < back), None)
        if cause is None:
            unexplained.append({**asdict(req), "sent": round(req.sent - started, 3),
                                "ended": round(req.ended - started, 3)})
        else:
            explained[cause.kind] += 1
    recovery = [back - kill.at for kill, back in windows if back != float("inf")]
    return {"requests": len(requests), "failures": sum(explained.values()) + len(unexplained),
            "failures_by_kill_kind": dict(explained),
            "failure_kinds": dict(Counter(r.error for r in requests if r.error)),
            "unexplained_failures": len(unexplained), "unexplained": unexplained[:20],
            "gateway_recovery_secs_max": round(max(recovery, default=0.0), 2),
            "gateway_recovery_secs_median": round(sorted(recovery)[len(recovery) // 2], 2)
            if recovery else 0.0}


def storm(url: str, tmp: Path, args: argparse.Namespace) -> dict:
    executions = tmp / "executions.txt"
    executions.touch()
    nodes = [NodeSlot(i, tmp / f"node{i}", url, executions, args.slots) for i in range(3)]
    storm_ = Storm(nodes, url, random.Random(args.seed))
    stopping = threading.Event()
    loads = [HttpLoad(node, args.rps / len(nodes), stopping) for node in nodes]
    try:
        for node in nodes:
            node.start()
            node.wait_ready()  # one at a time: the first migrates
        for load in loads:
            load.start()
        started, drain_secs = drain_in_the_storm(storm_, url, args)
        storm_.stop()
        stopping.set()
        for load in loads:
            load.join()
        requests = [r for load in loads for r in load.requests]
        return {**kill_figures(storm_.kills, started, drain_secs),
                **job_figures(url, executions, storm_.kills),
                "declared_dead_while_alive": registered_again(nodes),
                **http_figures(storm_.kills, requests, started)}
    finally:
        storm_.stop()
        stopping.set()
        for node in nodes:
            if node.proc is not None:
                node.stop()


def drain_in_the_storm(storm_: Storm, url: str, args: argparse.Namespace) -> tuple[float, float]:
    """Enqueue the jobs and kill until they are done: (when they were enqueued, seconds to
    drain the queue)."""
    started = time.monotonic()
    enqueue(storm_.nodes, url, args.jobs, args.job_ms / 1000)
    if not args.calm:
        storm_.start()
    wait_drained(url, args.timeout)
    return started, time.monotonic() - started


def registered_again(nodes: list[NodeSlot]) -> int:
    """How often a node that was not killed was declared dead (it found its row marked dead
    and registered again): its running jobs then run twice without any kill."""
    return sum(log.read_text(errors="replace").count('"event": "node.registered_again"')
               for node in nodes for log in node.root.glob("node-*.log"))


def kill_figures(kills: list[Kill], started: float, drain_secs: float) -> dict:
    last_kill = max((k.at for k in kills), default=started)
    return {"drain_secs": round(drain_secs, 2),
            "drained_after_last_kill_secs": round(started + drain_secs - last_kill, 2),
            "kills": len(kills),
            "kills_by_kind": dict(Counter(k.kind for k in kills)),
            "in_flight_by_kind": dict(sum((Counter({k.kind: len(k.in_flight)}) for k in kills),
                                          Counter())),
            "kill_log": [(round(k.at - started, 2), k.slot, k.kind, len(k.in_flight))
                         for k in kills]}


def passed(figures: dict) -> bool:
    return (figures["states"] == {"completed": figures["jobs"]}
            and figures["unexplained_duplicates"] == 0
            and figures["unexplained_failures"] == 0)


def report(figures: dict) -> None:
    print(f"jobs: {figures['jobs']}, states at the end {figures['states']}, "
          f"never ran {figures['never_ran']}")
    print(f"drained in {figures['drain_secs']} s ({figures['drained_after_last_kill_secs']} s "
          f"after the last kill)")
    print(f"kills: {figures['kills']} {figures['kills_by_kind']}")
    print(f"executions: {figures['executions']}; duplicates {figures['duplicates']} "
          f"({figures['committed_duplicates']} of them committed), bound: "
          f"{figures['in_flight_at_kills']} jobs in flight at the kills "
          f"{figures['in_flight_by_kind']}; unexplained "
          f"{figures['unexplained_duplicates']}; nodes declared dead while alive "
          f"{figures['declared_dead_while_alive']}")
    print(f"HTTP: {figures['requests']} requests, {figures['failures']} failed "
          f"{figures['failure_kinds']}; explained by the kill of their own gateway "
          f"{figures['failures_by_kill_kind']}; unexplained {figures['unexplained_failures']}")
    print(f"gateway back after a kill: median {figures['gateway_recovery_secs_median']} s, "
          f"max {figures['gateway_recovery_secs_max']} s")
    print("PASS" if passed(figures) else "FAIL")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--job-ms", type=float, default=200, help="how long each job sleeps")
    parser.add_argument("--slots", type=int, default=8, help="job slots per node")
    parser.add_argument("--rps", type=float, default=60, help="HTTP requests/s, all nodes")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=600, help="seconds to drain at most")
    parser.add_argument("--json", action="store_true", help="one JSON object, not the text")
    parser.add_argument("--calm", action="store_true", help="kill nothing: the drain time's peer")
    args = parser.parse_args()
    with postgres() as admin_url, tempfile.TemporaryDirectory(prefix="kill-storm-") as tmp:
        url = fresh_database(admin_url, f"chaos_kill_storm_{os.getpid()}")
        figures = storm(url, Path(tmp), args)
    if args.json:
        print(json.dumps(figures))
    else:
        report(figures)
    sys.exit(0 if passed(figures) else 1)


if __name__ == "__main__":
    main()
