"""The repository root is a runnable demo: `forge-node run` with no DATABASE_URL starts the
embedded PostgreSQL under .forge/ and stops it again on exit."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from tests.plugins.apps import AppDir, copy_demo_app, free_port
from tests.plugins.calls import rpc_call
from tests.plugins.nodes import wait_until

REPO = Path(__file__).resolve().parents[2]


def embedded_postgres(data_dir: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "postgres" and str(data_dir) in cmdline:
            found.append(process)
    return found


def check_the_demos_functions(port: int) -> None:
    """add_note stores a note and enqueues count_words in its transaction; the worker counts
    the words; list_notes shows both; a blank body is refused."""
    status, added = rpc_call(port, "add_note", {"body": "  four words in here "})
    assert status == 200, added
    note_id = added["data"]["id"]
    assert rpc_call(port, "add_note", {"body": "   "})[0] == 400

    def counted() -> list[dict]:
        notes = rpc_call(port, "list_notes", {})[1]["data"]
        return [n for n in notes if n["id"] == note_id and n["words"] is not None]

    [note] = wait_until(counted, timeout=15, message="count_words ran")
    assert (note["body"], note["words"]) == ("  four words in here ", 4)
    assert note["created_at"]
    assert len(rpc_call(port, "list_notes", {})[1]["data"]) == 1


def test_the_demo_runs_on_the_embedded_postgres(tmp_path, start_node):
    root = copy_demo_app(tmp_path / "demo")
    port = free_port()
    node = start_node(AppDir(root, port), None, PORT=str(port))
    node.wait_ready(timeout=120)
    embedded = node.wait_for_event("node.embedded_database")
    assert "development only" in embedded["message"]
    data_dir = root / ".forge" / "pgdata"
    assert embedded_postgres(data_dir)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_api/health", timeout=5) as resp:
        assert json.load(resp)["status"] == "healthy"
    check_the_demos_functions(port)
    node.send(signal.SIGTERM)
    assert node.wait(30) == 0
    wait_until(lambda: not embedded_postgres(data_dir), timeout=10,
               message="embedded PostgreSQL stopped")
