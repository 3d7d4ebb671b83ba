"""One capability's pool in a worker: its slots, its threads, and the jobs in its hands.

The worker's main thread claims jobs into a pool (up to twice its slots, so a thread never
waits for the next claim) and collects what the threads report. A pool's threads only run
handlers and report outcomes; every database write about a job happens on the main thread.

A job that outlives its timeout is abandoned: the main thread records the timeout, and a new
thread takes the old one's place so the pool keeps its size. Python cannot stop a thread, so
the abandoned one runs on until its handler returns, and its result is thrown away. A
handler that never returns keeps its thread (and whatever it holds) until the worker
process restarts.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .jobs import ClaimedJob


@dataclass(eq=False)
class RunningJob:
    """A claimed job in this worker: waiting for a thread, then running."""

    job: ClaimedJob
    timeout_secs: float
    cancel_flag: bool = False
    started_at: float | None = None
    abandoned: bool = False
    reported: bool = False  # its thread handed its outcome over: too late to abandon
    span: Any = None  # its job.execute span, ended when its outcome is recorded

    @property
    def deadline(self) -> float | None:
        return None if self.started_at is None else self.started_at + self.timeout_secs


@dataclass(eq=False)
class Outcome:
    running: RunningJob
    ok: bool
    result: Any = None
    error: str = ""
    permanent: bool = False
    finished_at: float = field(default_factory=time.monotonic)


class JobPool:
    def __init__(self, capability: str, slots: int, take_any: bool,
                 execute: Callable[[RunningJob], Outcome],
                 report: Callable[[Outcome], None]) -> None:
        self.capability = capability
        self.slots = slots
        self.take_any = take_any
        self._execute = execute
        self._report = report
        self._ready: queue.SimpleQueue[RunningJob | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # decides between abandon() and a late report
        self._threads = 0
        self.in_hand: dict[int, RunningJob] = {}  # main thread only: claimed, not collected
        self.queue_may_have_work = True

    @property
    def capacity(self) -> int:
        return 2 * self.slots

    def wants(self) -> int:
        return self.capacity - len(self.in_hand)

    def start(self) -> None:
        for _ in range(self.slots):
            self._start_thread()

    def submit(self, jobs: list[RunningJob]) -> None:
        for running in jobs:
            self.in_hand[running.job.id] = running
            self._ready.put(running)

    def collect(self, outcome: Outcome) -> bool:
        """Forget a job whose outcome arrived; False when it was already given up on."""
        return self.in_hand.pop(outcome.running.job.id, None) is outcome.running

    def running(self) -> list[RunningJob]:
        return [r for r in self.in_hand.values() if r.started_at is not None]

    def take_unstarted(self) -> list[RunningJob]:
        """Remove and return the jobs no thread has taken yet (for a drain)."""
        unstarted = []
        while True:
            try:
                running = self._ready.get_nowait()
            except queue.Empty:
                break
            if running is not None:
                unstarted.append(running)
                self.in_hand.pop(running.job.id, None)
        return unstarted

    def abandon(self, running: RunningJob) -> bool:
        """Give up on a started job: its thread is replaced, its late result ignored. False
        when its outcome came in meanwhile (it finished just at its deadline): that outcome
        stands."""
        with self._lock:
            if running.reported:
                return False
            running.abandoned = True
            self._start_thread()
        self.in_hand.pop(running.job.id, None)
        return True

    def close(self) -> None:
        for _ in range(self._threads):
            self._ready.put(None)  # one stop sign per thread ever started is enough

    def _start_thread(self) -> None:
        self._threads += 1
        threading.Thread(target=self._thread_main, daemon=True,
                         name=f"job-{self.capability}").start()

    def _thread_main(self) -> None:
        while True:
            running = self._ready.get()
            if running is None:
                return
            running.started_at = time.monotonic()
            outcome = self._execute(running)
            with self._lock:  # decided together with abandon(): report, or leave quietly
                if running.abandoned:
                    return
                self._report(outcome)
                running.reported = True
