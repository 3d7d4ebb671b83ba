"""A crash loop: a job whose handler kills its own worker process on every attempt.

The supervisor restarts the worker after delays that grow, every new worker gives back the
job its predecessor left running (the lost attempt counts), so the job ends dead after its
attempts instead of crashing the worker forever; meanwhile the gateway of the same node
keeps answering, and `forge-node status` counts the restarts.
"""

from __future__ import annotations

import itertools
import json
import threading
import urllib.request
from collections.abc import Iterator

import pytest

import forge_node as forge
from forge_node import app as app_module
from tests.plugins.jobs import job_status, wait_for_jobs
from tests.plugins.nodes import forge_cli, node_env, wait_until

CRASHING = '''
import os
import signal

import forge_node as forge


@forge.query(public=True)
def ping(ctx, args):
    return "pong"


@forge.job(max_attempts=3)
def exits(ctx, args):
    os._exit(1)


@forge.job(max_attempts=3)
def segfaults(ctx, args):
    os.kill(os.getpid(), signal.SIGSEGV)
'''


class Prober:
    """Calls /_api/health and the RPC function `ping` in a loop on a thread; counts answers
    and keeps every failure."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}/_api"
        self.answered = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.wait(0.05):  # a steady trickle, not a load test
            for request in (urllib.request.Request(f"{self.base}/health"),
                            urllib.request.Request(f"{self.base}/rpc/ping", data=b"{}",
                                                   method="POST")):
                self._call(request)

    def _call(self, request: urllib.request.Request) -> None:
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                json.load(resp)
            self.answered += 1
        except Exception as exc:  # every kind of failure is what this counts
            self.failures.append(f"{request.full_url}: {exc!r}")


@pytest.fixture
def crashing_app(make_app) -> Iterator:
    app = make_app(module=CRASHING)
    previous = app_module._current
    app_module.load_app(app.root, "app")  # forge.enqueue looks the job up in it
    yield app
    app_module._current = previous


@pytest.mark.parametrize(("job", "exit"), [("exits", "exit status 1"),
                                           ("segfaults", "killed by SIGSEGV")])
def test_a_job_that_kills_its_worker_every_time_ends_dead(crashing_app, start_node,
                                                          database_url, db, job, exit):
    node = start_node(crashing_app, database_url).wait_ready()
    with Prober(crashing_app.port) as prober:
        job_id = forge.enqueue(db, job, {})
        wait_for_jobs(db, [job_id], status="dead", timeout=30)
        node.wait_for_event("role.ready", where=of_worker, count=4)  # after the 3rd death
    deaths = [e for e in node.events() if e.get("event") == "role.died"]
    assert [(e["child_role"], e["exit"]) for e in deaths] == [("worker", exit)] * 3
    delays = node.restart_delays("worker")
    print(f"{job}: restart delays {[round(d, 3) for d in delays]} s; "
          f"{prober.answered} HTTP calls answered during the crash loop")
    assert len(delays) == 3 and 0.85 <= delays[0] <= 1.3, delays
    assert all(later >= 1.5 * earlier for earlier, later in itertools.pairwise(delays)), delays
    assert prober.failures == [] and prober.answered >= 100
    assert db.execute("SELECT attempts, last_error FROM forge_jobs WHERE id = %s",
                      [job_id]).fetchone() == (3, "the worker process on this node exited "
                                                  "before the job finished")
    assert job_status(db, job_id) == "dead"
    wait_until(lambda: db.execute("SELECT status FROM forge_nodes").fetchone() == ("active",),
               message="the node active again")
    status = forge_cli("status", "--json", "--config", str(crashing_app.config_path),
                       env=node_env(database_url))
    [row] = json.loads(status.stdout)["nodes"]
    assert (row["status"], row["restarts"]) == ("active", {"worker": 3})


def of_worker(event: dict) -> bool:
    return event["child_role"] == "worker"
