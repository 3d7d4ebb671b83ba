"""What a node costs while it runs: the CPU share of each of its processes and of each of its
PostgreSQL sessions, read from /proc (through psutil) over a window of wall time.

A session counts only when its backend runs on this machine (the suite's own PostgreSQL, or a
FORGE_TEST_DATABASE_URL on localhost); `node_backends` finds none for a remote server.
"""

from __future__ import annotations

import contextlib
import time

import psutil
import psycopg

from .nodes import NodeProcess, title


def node_processes(node: NodeProcess) -> dict[str, psutil.Process]:
    """The node's processes by title ("forge-node: worker"), with the pid where titles repeat."""
    found: dict[str, psutil.Process] = {}
    for process in node.tree():
        with contextlib.suppress(psutil.NoSuchProcess):
            name = title(process)
            found[f"{name} (pid {process.pid})" if name in found or
                  name == "forge-node: gateway worker" else name] = process
    return found


def node_backends(db: psycopg.Connection, node: NodeProcess) -> dict[str, psutil.Process]:
    """The node's database sessions by application_name, where their backends are local."""
    node_id = node.wait_for_event("node.starting")["node_id"]
    rows = db.execute("SELECT pid, application_name FROM pg_stat_activity "
                      "WHERE application_name LIKE %s", [f"forge-node %{node_id[:8]}%"]).fetchall()
    found = {}
    for pid, name in rows:
        with contextlib.suppress(psutil.Error):
            backend = psutil.Process(pid)
            if backend.name().startswith("postgres"):
                found[f"{name} (backend {pid})"] = backend
    return found


def backends_are_local(db: psycopg.Connection) -> bool:
    """Whether the server of `db` runs on this machine (its backends are our processes)."""
    pid = db.execute("SELECT pg_backend_pid()").fetchone()[0]
    try:
        return psutil.Process(pid).name().startswith("postgres")
    except psutil.Error:
        return False


def cpu_shares(processes: dict[str, psutil.Process], seconds: float) -> dict[str, float]:
    """Share of one core each process used over the next `seconds` (0.02 is 2%)."""
    before = {name: _cpu_seconds(p) for name, p in processes.items()}
    started = time.monotonic()
    time.sleep(seconds)  # the measurement window itself, not a wait for an event
    elapsed = time.monotonic() - started
    return {name: (_cpu_seconds(p) - before[name]) / elapsed for name, p in processes.items()
            if before[name] is not None and _cpu_seconds(p) is not None}


def over(shares: dict[str, float], limit: float) -> dict[str, str]:
    """The entries above `limit`, formatted for an assertion message."""
    return {name: f"{share:.1%}" for name, share in shares.items() if share >= limit}


def _cpu_seconds(process: psutil.Process) -> float | None:
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:
        return None
    return times.user + times.system
