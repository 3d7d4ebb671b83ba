"""Two schedulers that both believe they lead (a split brain) still fire each tick once.

Election keeps leaders apart almost always; what makes a tick fire exactly once is its claim
in `forge_cron_ticks`, taken in the transaction that enqueues the tick's job. To test that
claim alone, each scheduler here is a real scheduler role process (forked as the supervisor
forks one, with its real loop, lock checks and database sessions) whose leader lock is a key
of its own, so that both win their election and both fire every tick.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from forge_node import app as app_module
from forge_node import config as config_module
from forge_node import leader
from forge_node.migrations import Migrator, all_migrations
from forge_node.process import ChildContext, spawn
from forge_node.roles.scheduler import SchedulerProcess
from tests.plugins.nodes import wait_until

CRONS = '''
import forge_node as forge

@forge.cron(every_secs=1)
def every_second(ctx):
    pass
'''


class SplitBrainScheduler(SchedulerProcess):
    """A scheduler whose leader lock is not shared with the others, writing its log lines to
    a file of its own."""

    def __init__(self, ctx: ChildContext, lock_id: int, log_path: Path) -> None:
        super().__init__(ctx)
        self.lock_id = lock_id
        self.log_path = log_path

    def detach_from_supervisor(self) -> None:
        sys.stdout = self.log_path.open("a", buffering=1)  # the role logs to sys.stdout
        super().detach_from_supervisor()

    def boot(self) -> None:
        leader.ROLE_IDS["scheduler"] = self.lock_id  # in this forked process only
        super().boot()


def events(log_path: Path, name: str) -> list[dict]:
    lines = log_path.read_text().splitlines() if log_path.exists() else []
    return [e for e in map(json.loads, lines) if e.get("event") == name]


@pytest.fixture
def split_brain(make_app, database_url, tmp_path) -> Iterator[Callable[[int], list[Path]]]:
    """split_brain(n) forks n schedulers that all lead; returns their log files."""
    app = make_app(module=CRONS, node={"roles": ["scheduler"]})
    config = config_module.load(app.config_path, {"DATABASE_URL": database_url})
    previous = app_module._current
    registry = app_module.load_app(app.root, "app")  # enqueue() looks jobs up in it
    Migrator(database_url, all_migrations(app.root)).up()
    pids: list[int] = []

    def fork(count: int) -> list[Path]:
        logs = []
        for n in range(count):
            read_fd, write_fd = os.pipe()
            os.set_blocking(write_fd, False)
            ctx = ChildContext("scheduler", config, database_url, database_url, uuid.uuid4(),
                               registry, os.getpid(), write_fd, (read_fd,))
            logs.append(tmp_path / f"scheduler{n}.log")
            pids.append(spawn(SplitBrainScheduler(ctx, 100 + n, logs[-1])))
            os.close(write_fd)
        return logs

    yield fork
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    app_module._current = previous


def jobs_per_tick(db, after: str) -> list[tuple]:
    return db.execute("SELECT args->>'scheduled_for', count(*) FROM forge_jobs "
                      "WHERE type = 'cron:every_second' AND (args->>'scheduled_for')::timestamptz"
                      " > %s::timestamptz GROUP BY 1 ORDER BY 1", [after]).fetchall()


def test_two_leaders_at_once_fire_each_tick_once(split_brain, db):
    logs = split_brain(2)
    elected = wait_until(lambda: all(events(path, "leader.elected") for path in logs) and
                         [events(path, "leader.elected")[0] for path in logs],
                         timeout=15, message="both schedulers lead")
    both_lead = max(event["ts"] for event in elected)
    wait_until(lambda: len(jobs_per_tick(db, both_lead)) >= 4, timeout=15,
               message="four ticks while both lead")
    fired = jobs_per_tick(db, both_lead)
    assert all(count == 1 for _, count in fired), f"jobs per tick: {fired}"
    assert [path for path in logs if not events(path, "leader.lost")] == logs
