"""A kill storm, shortened: bench/chaos/kill_storm.py with 500 jobs, run as it is run by hand.

Three nodes, a steady HTTP load, and a SIGKILL every 1-2 s (a gateway, worker or scheduler
child, a supervisor alone, or every process of a node) until the queue is drained.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.plugins.nodes import node_env

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "chaos" / "kill_storm.py"
KINDS = {"gateway", "worker", "scheduler", "supervisor", "node"}


def run_storm(admin_url: str) -> dict:
    """Run the script; whatever it leaves behind (when it fails or times out) is killed."""
    script = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--jobs", "500", "--job-ms", "500", "--timeout", "60",
         "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=node_env(None, BENCH_DATABASE_URL=admin_url))
    try:
        out, err = script.communicate(timeout=85)
    finally:
        if script.poll() is None:
            kill_tree(psutil.Process(script.pid))
        script.wait()
    assert out.strip(), f"the script printed nothing; stderr:\n{err[-4000:]}"
    return json.loads(out.strip().splitlines()[-1])


def kill_tree(root: psutil.Process) -> None:
    for process in [*root.children(recursive=True), root]:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.mark.slow
def test_a_kill_storm_loses_no_job_and_every_failure_has_its_kill(pg_server):
    figures = run_storm(pg_server.admin_url)
    assert figures["states"] == {"completed": 500}, "every job completed, none left running"
    assert figures["never_ran"] == 0
    assert figures["kills"] >= len(KINDS)
    assert set(figures["kills_by_kind"]) == KINDS
    assert figures["unexplained_duplicates"] == 0, figures["unexplained_duplicate_jobs"]
    assert figures["duplicates"] <= figures["in_flight_at_kills"]
    assert figures["requests"] > 100
    assert figures["unexplained_failures"] == 0, figures["unexplained"]
