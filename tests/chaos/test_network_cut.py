"""A network cut: a node in its own network namespace loses PostgreSQL for longer than the dead
threshold, then gets it back.

The node reaches PostgreSQL over a veth pair, at the host end's address, where PostgreSQL
listens. The cut takes the host end's link down: packets are lost and no connection is reset,
as with a pulled cable or a partition. While it lasts, the cluster declares the node dead,
another node runs its jobs again, and PostgreSQL ends the cut node's leader session (its
keepalives and idle_session_timeout), so the other node leads the scheduler. When the link
comes back, the node's late completions are refused (fencing), it registers again, and it
stays a standby.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

import psycopg
import pytest

import forge_node as forge
from forge_node import app as app_module
from tests.plugins.jobs import EXECUTIONS, JOBS_MODULE, executions, wait_for_jobs
from tests.plugins.nodes import FORGE_NODE, NodeProcess, node_env, wait_until

JOB_SECS = 8  # long enough to still run when the cut comes, short enough to finish within it


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@dataclass
class Namespace:
    name: str
    host_veth: str
    host_ip: str
    subnet: str

    def cut(self) -> None:
        ip("link", "set", self.host_veth, "down")

    def reconnect(self) -> None:
        ip("link", "set", self.host_veth, "up")


def namespaces_unavailable() -> str | None:
    """Why this machine cannot create network namespaces, or None when it can."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (apt-get install iproute2)"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"forge-probe-{os.getpid()}"
    try:
        ip("netns", "add", probe)
    except subprocess.CalledProcessError as exc:
        return f"`ip netns add` failed: {exc.stderr.strip()}"
    ip("netns", "del", probe)
    return None


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    """A network namespace joined to the host by a veth pair, both removed afterwards."""
    if reason := namespaces_unavailable():
        pytest.skip(f"network namespaces cannot be created here: {reason}")
    n = os.getpid() % 250 + 1  # names and a /30 of this run's own, beside other runs
    ns = Namespace(f"forge-cut-{os.getpid()}", f"fcut{n}h", f"10.231.{n}.1",
                   f"10.231.{n}.0/30")
    inner = f"fcut{n}n"
    try:
        ip("netns", "add", ns.name)
        ip("link", "add", ns.host_veth, "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "netns", ns.name)
        ip("addr", "add", f"{ns.host_ip}/30", "dev", ns.host_veth)
        ip("link", "set", ns.host_veth, "up")
        ip("-n", ns.name, "addr", "add", f"10.231.{n}.2/30", "dev", inner)
        ip("-n", ns.name, "link", "set", inner, "up")
        ip("-n", ns.name, "link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", ns.host_veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)


class NamespacedNode(NodeProcess):
    """`forge-node run` inside the namespace (`ip netns exec` execs it: the pid is the node's)."""

    def __init__(self, namespace: Namespace, *args) -> None:
        super().__init__(*args)
        self.namespace = namespace

    def start(self) -> NamespacedNode:
        with self.log_path.open("ab") as log:
            command = ["ip", "netns", "exec", self.namespace.name, *FORGE_NODE, "run",
                       "--config", str(self.app.config_path)]
            self.proc = subprocess.Popen(command, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.app.root)
        return self


@pytest.fixture
def postgres_on_the_veth(own_postgres, namespace) -> Iterator[tuple[str, str]]:
    """A database on a PostgreSQL that also listens at the veth's host end: (its URL over the
    Unix socket, its URL over the veth). Stopped here: pgserver's own cleanup stops only the
    server process it started itself."""
    with (own_postgres.data_dir / "pg_hba.conf").open("a") as hba:
        hba.write(f"host all all {namespace.subnet} trust\n")
    own_postgres.stop()
    own_postgres.start(listen_addresses=namespace.host_ip)
    name = own_postgres.create_database()
    with psycopg.connect(own_postgres.admin_url) as conn:
        port = conn.execute("SHOW port").fetchone()[0]
    user = urlsplit(own_postgres.admin_url).username
    try:
        yield (own_postgres.url_for(name),
               f"postgresql://{user}@{namespace.host_ip}:{port}/{name}")
    finally:
        own_postgres.stop("immediate")


@pytest.fixture
def jobs_app(make_app):
    """The jobs app, loaded here too, so that the test can enqueue its jobs."""
    previous = app_module._current

    def make():
        return make_app(module=JOBS_MODULE, migrations=EXECUTIONS,
                        node={"roles": ["worker", "scheduler"]})
    app_module.load_app(make().root, "app")
    yield make
    app_module._current = previous


class Stopwatch:
    """Seconds since the cut at which each step was seen: the figures of docs/reliability.md."""

    def __init__(self) -> None:
        self.started = time.time()
        self.laps: dict[str, float] = {}

    def lap(self, name: str, event: dict | None = None) -> None:
        """Now, or when a node logged `event`."""
        at = datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp() \
            if event else time.time()
        self.laps[name] = round(at - self.started, 2)

    def __str__(self) -> str:
        return ", ".join(f"{name} {secs}" for name, secs in self.laps.items())


def node_id(db: psycopg.Connection, pid: int) -> str:
    return str(db.execute("SELECT id FROM forge_nodes WHERE pid = %s", [pid]).fetchone()[0])


def status_of(db: psycopg.Connection, pid: int) -> str | None:
    row = db.execute("SELECT status FROM forge_nodes WHERE pid = %s", [pid]).fetchone()
    return row and row[0]


def heartbeat_age(db: psycopg.Connection, pid: int) -> float:
    return db.execute("SELECT extract(epoch FROM now() - last_heartbeat) FROM forge_nodes "
                      "WHERE pid = %s", [pid]).fetchone()[0]


def scheduler_leader(db: psycopg.Connection) -> str | None:
    row = db.execute("SELECT node_id::text FROM forge_leaders WHERE role = 'scheduler'")
    return (row.fetchone() or [None])[0]


@pytest.mark.slow
def test_a_node_cut_off_longer_than_the_dead_threshold_is_replaced_fenced_and_comes_back(
        jobs_app, start_node, postgres_on_the_veth, namespace, tmp_path):
    local_url, veth_url = postgres_on_the_veth
    db = psycopg.connect(local_url, autocommit=True)
    cut = NamespacedNode(namespace, jobs_app(), node_env(veth_url), tmp_path / "cut.log")
    try:
        cut.start().wait_ready()
        cut.wait_for_event("leader.elected")
        job_ids = forge.enqueue_many(db, "sleeper", [{"key": f"cut{i}", "secs": JOB_SECS}
                                                     for i in range(2)])
        wait_until(lambda: len(executions(db, "cut")) == 2, message="both jobs running")
        other = start_node(jobs_app(), local_url).wait_ready()
        cut_id, other_id = node_id(db, cut.pid), node_id(db, other.pid)

        namespace.cut()
        clock = Stopwatch()
        wait_until(lambda: status_of(db, cut.pid) == "dead", timeout=15,
                   message="the cut node declared dead")
        clock.lap("declared dead")
        reclaimed = other.wait_for_event("job.reclaimed", count=2)
        assert reclaimed["dead_node_id"] == cut_id
        clock.lap("jobs reclaimed", reclaimed)
        wait_for_jobs(db, job_ids, timeout=30)
        clock.lap("jobs completed elsewhere")
        clock.lap("other node leads", other.wait_for_event("leader.elected", timeout=40))
        assert scheduler_leader(db) == other_id
        namespace.reconnect()
        clock.lap("reconnected")

        fenced = cut.wait_for_event("job.fenced", count=2, timeout=60)
        assert {e["job_id"] for e in cut.events() if e.get("event") == "job.fenced"} == \
            set(job_ids), f"the late completions refused (fenced {fenced})"
        clock.lap("late completions fenced", fenced)
        clock.lap("registered again", cut.wait_for_event("node.registered_again", timeout=30))
        wait_until(lambda: status_of(db, cut.pid) == "active" and heartbeat_age(db, cut.pid)
                   < 1, message="the cut node heartbeating again")
        clock.lap("heartbeating again")
        clock.lap("standby", cut.wait_for_event("leader.lost", timeout=30))
        print(f"network cut, seconds since the cut: {clock}")
        assert clock.laps["reconnected"] > 2, "cut off for longer than the dead threshold"
        assert scheduler_leader(db) == other_id, "the node came back a standby"
        assert sum(e.get("event") == "leader.elected" for e in cut.events()) == 1
        rows = db.execute("SELECT status, attempts, node_id::text FROM forge_jobs "
                          "WHERE id = ANY(%s)", [job_ids]).fetchall()
        assert rows == [("completed", 2, other_id)] * 2
        workers = {cut.children()["worker"].pid: 1, other.children()["worker"].pid: 2}
        assert sorted((attempt, workers.get(pid)) for _, attempt, pid, _ in
                      executions(db, "cut")) == [(1, 1), (1, 1), (2, 2), (2, 2)]
    finally:
        if cut.proc is not None:
            cut.kill_tree()
        db.close()
