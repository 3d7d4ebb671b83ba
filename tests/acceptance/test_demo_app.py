"""The repository root is a runnable demo: `forge-node run` with no DATABASE_URL starts the
embedded PostgreSQL under .forge/ and stops it again on exit."""

from __future__ import annotations

import json
import shutil
import signal
import urllib.request
from pathlib import Path

import psutil

from tests.plugins.apps import AppDir, free_port
from tests.plugins.nodes import wait_until

REPO = Path(__file__).resolve().parents[2]


def embedded_postgres(data_dir: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "postgres" and str(data_dir) in cmdline:
            found.append(process)
    return found


def test_the_demo_runs_on_the_embedded_postgres(tmp_path, start_node):
    root = tmp_path / "demo"
    root.mkdir()
    for name in ("forge.toml", "app.py"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "migrations", root / "migrations")
    port = free_port()
    node = start_node(AppDir(root, port), None, PORT=str(port))
    node.wait_ready(timeout=120)
    embedded = node.wait_for_event("node.embedded_database")
    assert "development only" in embedded["message"]
    data_dir = root / ".forge" / "pgdata"
    assert embedded_postgres(data_dir)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_api/health", timeout=5) as resp:
        assert json.load(resp)["status"] == "healthy"
    node.send(signal.SIGTERM)
    assert node.wait(30) == 0
    wait_until(lambda: not embedded_postgres(data_dir), timeout=10,
               message="embedded PostgreSQL stopped")
