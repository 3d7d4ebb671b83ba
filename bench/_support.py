"""Shared by the benchmarks: a PostgreSQL to run against and small process helpers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg

from forge_node.embedded import EmbeddedPostgres


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """BENCH_DATABASE_URL when set, otherwise a throwaway embedded PostgreSQL."""
    url = os.environ.get("BENCH_DATABASE_URL")
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="forge-bench-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pg")
        try:
            yield server.start()
        finally:
            server.stop()


def fresh_database(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    from urllib.parse import urlsplit, urlunsplit
    return urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout: float = 30) -> float:
    """Poll until `url` answers 200; return the monotonic time it first did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return time.monotonic()
        except OSError:
            time.sleep(0.005)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop(proc: subprocess.Popen, timeout_secs: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout_secs`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_secs)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def summary(samples: list[float]) -> str:
    return (f"median {statistics.median(samples):.3f} s, min {min(samples):.3f} s, "
            f"max {max(samples):.3f} s over {len(samples)} runs")


def proc_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command name, user + system CPU seconds of all its threads)."""
    ticks = os.sysconf("SC_CLK_TCK")
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        table[int(stat.parent.name)] = (int(fields[1]), name,
                                        (int(fields[11]) + int(fields[12])) / ticks)
    return table


def descendants(procs: dict[int, tuple[int, str, float]], root: int) -> set[int]:
    found = {root} if root in procs else set()
    while True:
        more = {pid for pid, (ppid, _, _) in procs.items() if ppid in found} - found
        if not more:
            return found
        found |= more
