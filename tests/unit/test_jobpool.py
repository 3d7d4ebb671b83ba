"""A job pool's threads against its main thread: a job that finished just at its deadline."""

from __future__ import annotations

import threading
import time

from forge_node.jobpool import JobPool, Outcome, RunningJob
from forge_node.jobs import ClaimedJob


def claimed(job_id: int) -> ClaimedJob:
    return ClaimedJob(id=job_id, type="noop", args={}, attempt=1, max_attempts=3,
                      timeout_secs=0.01, cancel_requested=False, capability="*")


def test_an_outcome_reported_before_the_timeout_is_noticed_stands():
    reported: list[Outcome] = []
    arrived = threading.Event()

    def report(outcome: Outcome) -> None:
        reported.append(outcome)
        arrived.set()

    pool = JobPool("general", 1, True, execute=lambda r: Outcome(r, ok=True, result=42),
                   report=report)
    pool.start()
    try:
        running = RunningJob(claimed(1), timeout_secs=0.01)
        pool.submit([running])
        assert arrived.wait(5)
        time.sleep(0.02)  # past its deadline, its outcome not yet collected
        assert running.deadline is not None and time.monotonic() > running.deadline
        assert pool.abandon(running) is False
        assert not running.abandoned
        assert pool.collect(reported[0]) is True
        assert pool._threads == 1  # no replacement thread for a job that finished
    finally:
        pool.close()


def test_a_job_still_running_at_its_deadline_is_abandoned_and_its_thread_replaced():
    release = threading.Event()
    reported: list[Outcome] = []

    threads: list[threading.Thread] = []

    def execute(running: RunningJob) -> Outcome:
        threads.append(threading.current_thread())
        release.wait(5)
        return Outcome(running, ok=True)

    pool = JobPool("general", 1, True, execute=execute, report=reported.append)
    pool.start()
    try:
        running = RunningJob(claimed(2), timeout_secs=0.01)
        pool.submit([running])
        deadline = time.monotonic() + 5
        while running.started_at is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert pool.abandon(running) is True
        assert running.abandoned and pool._threads == 2
        release.set()
        threads[0].join(5)  # the abandoned thread has finished and would have reported
        assert not threads[0].is_alive()
        assert reported == []  # the late result is ignored
    finally:
        release.set()
        pool.close()
