"""Real `forge-node` processes for acceptance and chaos tests.

Every node a test starts is stopped by the fixture afterwards, by pid, together with every
process it forked, whatever state the test left it in.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from .apps import AppDir, build_app
from .postgres import PostgresServer

FORGE_NODE = [str(Path(sys.executable).with_name("forge-node"))] \
    if Path(sys.executable).with_name("forge-node").exists() \
    else [sys.executable, "-m", "forge_node"]


def node_env(database_url: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FORGE_", "OTEL_")) and k not in ("DATABASE_URL", "NOTIFY_SOCKET")}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def forge_cli(*args: str, env: dict[str, str], cwd: Path | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*FORGE_NODE, *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


class NodeProcess:
    def __init__(self, app: AppDir, env: dict[str, str], log_path: Path) -> None:
        self.app = app
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> NodeProcess:
        with self.log_path.open("ab") as log:
            command = [*FORGE_NODE, "run", "--config", str(self.app.config_path)]
            self.proc = subprocess.Popen(command, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.app.root)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self) -> list[dict]:
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    lines.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return lines

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_event(self, event: str, timeout: float = 20,
                       where: Callable[[dict], bool] = lambda e: True, count: int = 1) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events() if e.get("event") == event and where(e)]
            if len(found) >= count:
                return found[count - 1]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {event} event (x{count}) within {timeout}s; node output:\n"
                             f"{self.output()[-6000:]}")

    def restart_delays(self, role: str) -> list[float]:
        """Seconds from each death of `role` to the start of its next process, as the
        supervisor logged them (role.died, role.started)."""
        delays, died_at = [], None
        for event in self.events():
            if event.get("child_role") != role:
                continue
            if event.get("event") == "role.died":
                died_at = timestamp(event)
            elif event.get("event") == "role.started" and died_at is not None:
                delays.append(timestamp(event) - died_at)
                died_at = None
        return delays

    def wait_ready(self, timeout: float = 30) -> NodeProcess:
        self.wait_for_event("node.ready", timeout)
        return self

    def send(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def children(self) -> dict[str, psutil.Process]:
        """The supervisor's direct children by role, read from their process titles."""
        return {title(child).removeprefix("forge-node: "): child
                for child in psutil.Process(self.pid).children()}

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill_tree(self) -> None:
        for process in self.tree():
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        if self.proc.poll() is None:
            self.proc.wait(10)


def timestamp(event: dict) -> float:
    """A log line's time, in seconds since the epoch."""
    return datetime.datetime.fromisoformat(event["ts"]).timestamp()


@contextlib.contextmanager
def running_node(app: AppDir, database_url: str, log_path: Path,
                 **env: str) -> Iterator[NodeProcess]:
    """A ready `forge-node run`, killed with everything it forked when the block ends: for
    fixtures that share one node among the tests of a module."""
    node = NodeProcess(app, node_env(database_url, **env), log_path).start()
    try:
        yield node.wait_ready()
    finally:
        node.kill_tree()


@contextlib.contextmanager
def shared_node(pg_server: PostgresServer, folder: Path, module: str,
                **sections: dict) -> Iterator[NodeProcess]:
    """A ready node of `module` on a database of its own, both gone when the block ends: one
    node that every test of a module shares (a node takes about a second to start)."""
    name = pg_server.create_database()
    try:
        app = build_app(folder / "app", module, **sections)
        with running_node(app, pg_server.url_for(name), folder / "node.log") as node:
            yield node
    finally:
        pg_server.drop_database(name)


def title(process: psutil.Process) -> str:
    """A process's title as `ps` shows it (setproctitle pads the command line)."""
    return " ".join(process.cmdline()).strip()


def wait_until(predicate: Callable[[], object], timeout: float = 10, interval: float = 0.05,
               message: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{message} not reached within {timeout}s")


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """start_node(app, database_url, **env) -> a running `forge-node run` (not yet ready)."""
    started: list[NodeProcess] = []
    trees: list[list[psutil.Process]] = []

    def start(app: AppDir, database_url: str | None, **env: str) -> NodeProcess:
        log_path = tmp_path / f"node{len(started) + 1}.log"
        node = NodeProcess(app, node_env(database_url, **env), log_path).start()
        started.append(node)
        return node

    yield start
    for node in started:
        trees.append(node.tree())
        node.kill_tree()
    for tree in trees:
        for process in tree:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
