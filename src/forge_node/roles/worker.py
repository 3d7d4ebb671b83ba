"""The worker role: claims jobs from `forge_jobs` and runs the app's handlers.

One main thread owns the queue connection and every write about a job: it claims into each
capability's pool (`jobpool.JobPool`), collects outcomes in batches, retries with backoff,
buries what is out of attempts, and gives up on jobs past their timeout. It sleeps until a
NOTIFY (a job was enqueued or cancelled), an outcome, or the poll interval, whichever comes
first, so a lost notification costs at most one poll interval.

On SIGTERM it stops claiming, gives back the jobs it claimed but did not start, lets the
running ones finish within the node's drain timeout, and gives back the rest: nothing is
lost and nothing is left running.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
import traceback
from collections.abc import Iterator

import psycopg
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode

from .. import db, jobs
from ..app import DEFAULT_JOB_BACKOFF
from ..context import JobContext
from ..encoding import to_jsonable
from ..errors import PermanentError
from ..jobpool import JobPool, Outcome, RunningJob
from ..jobs import ANY_CAPABILITY, CANCEL_CHANNEL, NOTIFY_CHANNEL, ClaimedJob, WorkerQueue
from ..listener import Listener
from ..observability.logs import JOB_ID
from ..process import RoleProcess

log = logging.getLogger(__name__)

CANCEL_CHECK_SECS = 1.0
DRAIN_MARGIN_SECS = 1.0      # finish draining this long before the supervisor's SIGKILL


class WorkerProcess(RoleProcess):
    role = "worker"

    def boot(self) -> None:
        super().boot()
        config, ctx = self.ctx.config, self.ctx
        self.poll_interval = config.worker.poll_interval_ms / 1000
        self.default_timeout = config.worker.job_timeout_secs
        self.reported: collections.deque[Outcome] = collections.deque()
        self.unrecorded: list[Outcome] = []
        self.pools = [JobPool(capability, config.worker.slots_for(capability), take_any=i == 0,
                              execute=self.execute, report=self.report)
                      for i, capability in enumerate(config.node.worker_capabilities)]
        slots = sum(pool.slots for pool in self.pools)
        # [database] statement_timeout_secs bounds handlers' statements, unless a job has a
        # timeout_secs of its own (job_connection)
        self.handler_db = db.create_pool(
            ctx.database_url, f"{self.purpose} jobs", min_size=0,
            max_size=min(slots + 2, config.database.pool_size),
            statement_timeout_secs=config.database.statement_timeout_secs, pooled=ctx.pooled,
            configure=functools.partial(_use_cursor, self.telemetry.cursor_classes()[0])
            if self.telemetry.db_spans else None)  # db.query spans of the handlers' statements
        self.handler_db.open(wait=False)
        self.listener = Listener(ctx.direct_url, (NOTIFY_CHANNEL, CANCEL_CHANNEL), self.purpose,
                                 log)
        self.queue_db = db.Dedicated(ctx.database_url, self.purpose, pooled=ctx.pooled)
        self.reclaimed = False
        self.next_poll = 0.0
        self.next_cancel_check = 0.0
        self.metrics = self.telemetry.metrics
        for pool in self.pools:
            pool.start()

    def run_once(self) -> None:
        """One turn: wake-ups, outcomes, timeouts, cancel requests, then new claims."""
        self.reclaim_jobs_left_running()
        self.read_notifications()
        self.collect_and_record()
        self.refresh_cancel_requests()
        self.claim_jobs()

    def database_lost(self) -> None:
        self.queue_db.close()

    def connection(self) -> WorkerQueue:
        queue = WorkerQueue(self.queue_db.get(), self.ctx.node_id)
        if self.queue_db.new_session and self.reclaimed:
            self.reclaim_lost_claims(queue)
        return queue

    # -- the steps of a turn ---------------------------------------------------------------

    def reclaim_jobs_left_running(self) -> None:
        """Before the first claim: jobs a crashed predecessor on this node left running."""
        if self.reclaimed:
            return
        error = "the worker process on this node exited before the job finished"
        for job_id, status in self.connection().reclaim_jobs_of_node(error):
            log.warning("job %d was left running by a previous worker on this node: now %s",
                        job_id, status, extra={"event": "job.reclaimed_after_restart",
                                               "job_id": job_id})
        self.reclaimed = True

    def reclaim_lost_claims(self, queue: WorkerQueue) -> None:
        """On a new session: a claim whose answer the old one lost (PostgreSQL crashed or
        ended it after the commit) left jobs running here that no pool holds."""
        held = [job_id for pool in self.pools for job_id in pool.in_hand] + \
            [outcome.running.job.id for outcome in self.unrecorded]
        error = "claimed by a statement whose answer the worker never got"
        for job_id, status in queue.reclaim_jobs_of_node(error, held):
            log.warning("job %d was claimed here but the answer was lost: now %s", job_id,
                        status, extra={"event": "job.reclaimed_lost_claim", "job_id": job_id})

    def read_notifications(self) -> None:
        notes = self.listener.poll()
        if notes is None:  # (re)connected: anything may have been missed
            self.next_poll = 0.0
            self.next_cancel_check = 0.0
            return
        for note in notes:
            if note.channel == CANCEL_CHANNEL:
                self.next_cancel_check = 0.0
                continue
            for pool in self.pools:
                if note.payload == pool.capability or (note.payload == ANY_CAPABILITY
                                                       and pool.take_any):
                    pool.queue_may_have_work = True

    def collect_outcomes(self) -> None:
        while self.reported:
            outcome = self.reported.popleft()
            if self.pool_of(outcome.running.job).collect(outcome):
                self.unrecorded.append(outcome)

    def expire_overdue_jobs(self) -> None:
        now = time.monotonic()
        for pool in self.pools:
            for running in pool.running():
                if running.deadline is not None and now > running.deadline \
                        and pool.abandon(running):
                    log.warning("job %d (%s) timed out after %g s", running.job.id,
                                running.job.type, running.timeout_secs,
                                extra={"event": "job.timeout", "job_id": running.job.id})
                    self.unrecorded.append(Outcome(
                        running, ok=False, error=f"timed out after {running.timeout_secs:g} s"))

    def record_outcomes(self) -> None:
        if not self.unrecorded:
            return
        queue = self.connection()
        done = [o for o in self.unrecorded if o.ok]
        failed = [o for o in self.unrecorded if not o.ok]
        if done:
            statuses = queue.complete([(o.running.job.id, o.running.job.attempt, o.result)
                                       for o in done])
            for outcome in done:
                job_id = outcome.running.job.id
                if job_id not in statuses:
                    log.warning("job %d finished here, but another node had taken it over; "
                                "its result is discarded", job_id,
                                extra={"event": "job.fenced", "job_id": job_id})
                self.finish_span(outcome, statuses.get(job_id, "fenced"))
        self.unrecorded = failed
        while self.unrecorded:
            self.record_failure(queue, self.unrecorded[0])
            self.unrecorded.pop(0)

    def record_failure(self, queue: WorkerQueue, outcome: Outcome) -> None:
        job = outcome.running.job
        spec = self.ctx.app.jobs.get(job.type)
        last_attempt = outcome.permanent or job.attempt >= job.max_attempts
        if last_attempt:
            status = queue.bury(job, outcome.error)
        else:
            backoff = spec.backoff if spec else DEFAULT_JOB_BACKOFF
            delay = backoff.delay(job.attempt)
            status = queue.retry(job, delay, outcome.error)
        if status is None:
            log.warning("job %d failed here, but another node had taken it over", job.id,
                        extra={"event": "job.fenced", "job_id": job.id})
            self.finish_span(outcome, "fenced")
            return
        self.finish_span(outcome, "timeout" if outcome.running.abandoned else
                         {"pending": "retrying"}.get(status, status))
        level = logging.ERROR if status == "dead" else logging.WARNING
        log.log(level, "job %d (%s) attempt %d/%d failed: %s; now %s", job.id, job.type,
                job.attempt, job.max_attempts, outcome.error.splitlines()[0], status,
                extra={"event": "job.dead" if status == "dead" else "job.failed",
                       "job_id": job.id, "job_type": job.type, "status": status})

    def finish_span(self, outcome: Outcome, result: str) -> None:
        """End the attempt's job.execute span and count it, now that its fate is known."""
        running = outcome.running
        seconds = outcome.finished_at - (running.started_at or outcome.finished_at)
        if running.span is not None:
            running.span.set_attribute("job.outcome", result)
            if result not in ("completed", "cancelled"):
                running.span.set_status(StatusCode.ERROR)
            running.span.end()
        self.metrics.job_run(running.job.type, result, seconds)

    def refresh_cancel_requests(self) -> None:
        now = time.monotonic()
        if now < self.next_cancel_check:
            return
        self.next_cancel_check = now + CANCEL_CHECK_SECS
        if not any(pool.in_hand for pool in self.pools):
            return
        requested = self.connection().cancel_requests()
        for pool in self.pools:
            for job_id, running in pool.in_hand.items():
                if job_id in requested:
                    running.cancel_flag = True

    def claim_jobs(self) -> None:
        now = time.monotonic()
        if now >= self.next_poll:
            self.next_poll = now + self.poll_interval
            for pool in self.pools:
                pool.queue_may_have_work = True
        for pool in self.pools:
            wants = pool.wants()
            worth_a_claim = wants >= max(1, pool.slots // 2) or len(pool.in_hand) == 0
            if pool.queue_may_have_work and wants > 0 and worth_a_claim:
                claimed = self.connection().claim(pool.capability, wants, pool.take_any)
                pool.submit([RunningJob(job, job.timeout_secs or self.default_timeout,
                                        job.cancel_requested) for job in claimed])
                if len(claimed) < wants:
                    pool.queue_may_have_work = False

    def next_deadline(self) -> float:
        """Now when outcomes wait to be recorded; else the next poll or job deadline.
        (A NOTIFY on the listener's socket wakes the worker earlier.)"""
        if self.reported:
            return 0.0
        deadlines = [r.deadline for p in self.pools for r in p.running() if r.deadline]
        return min([self.next_poll, *deadlines])

    def wake_fds(self) -> list[int]:
        return self.listener.fds()

    # -- in a pool's thread ----------------------------------------------------------------

    def execute(self, running: RunningJob) -> Outcome:
        """Run one attempt in its job.execute span, joined to the trace that enqueued it."""
        job = running.job
        parent = propagate.extract({"traceparent": job.trace_context or ""})
        running.span = self.telemetry.start_span(
            "job.execute", parent=parent, kind=SpanKind.CONSUMER,
            attributes={"job.type": job.type, "job.id": job.id, "job.attempt": job.attempt})
        token = otel_context.attach(trace.set_span_in_context(running.span, parent))
        job_token = JOB_ID.set(job.id)
        try:
            return self.run_handler(running)
        finally:
            JOB_ID.reset(job_token)
            otel_context.detach(token)

    def run_handler(self, running: RunningJob) -> Outcome:
        """Run one job's handler; commit its work only if it returned (and in time)."""
        job = running.job
        spec = self.ctx.app.jobs.get(job.type)
        if spec is None:
            return Outcome(running, ok=False, error=f"this worker has no job named {job.type!r}")
        if running.cancel_flag:
            return Outcome(running, ok=True)  # cancelled before it started
        ctx = JobContext(job, functools.partial(self.job_connection, job),
                         lambda percent, message: self.write_progress(job, percent, message),
                         lambda: running.cancel_flag)
        try:
            if spec.is_async:
                result = asyncio.run(spec.handler(ctx, job.args))
            else:
                result = spec.handler(ctx, job.args)
            value = to_jsonable(result)
            ctx.finish(TimeoutError("abandoned") if running.abandoned else None)
        except Exception as exc:
            ctx.finish(exc)
            return Outcome(running, ok=False, error=_describe(exc),
                           permanent=isinstance(exc, PermanentError))
        return Outcome(running, ok=True, result=value)

    @contextlib.contextmanager
    def job_connection(self, job: ClaimedJob) -> Iterator[psycopg.Connection]:
        """A handler's connection; a job's own timeout_secs bounds its statements instead of
        [database] statement_timeout_secs (for its transaction: one that commits early gets
        the default back)."""
        with self.handler_db.connection() as conn:
            if job.timeout_secs is not None:
                db.set_local_timeout(conn, job.timeout_secs)
            elif self.ctx.pooled:  # no session settings through a pooler: per transaction
                db.set_local_timeout(conn, self.ctx.config.database.statement_timeout_secs)
            yield conn

    def report(self, outcome: Outcome) -> None:
        self.reported.append(outcome)
        if len(self.reported) == 1:
            self.waker.wake()

    def write_progress(self, job: ClaimedJob, percent: int, message: str | None) -> None:
        with self.handler_db.connection() as conn:
            jobs.set_progress(conn, job, self.ctx.node_id, percent, message)

    def pool_of(self, job: ClaimedJob) -> JobPool:
        for pool in self.pools:
            if job.capability == pool.capability:
                return pool
        return self.pools[0]

    # -- drain -----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Give back unstarted jobs, let running ones finish in time, give back the rest."""
        deadline = time.monotonic() + max(
            0.0, self.ctx.config.node.drain_timeout_secs - DRAIN_MARGIN_SECS)
        unstarted = [r.job for pool in self.pools for r in pool.take_unstarted()]
        self.give_back(unstarted, deadline, "claimed but not started")
        while any(pool.in_hand for pool in self.pools) and time.monotonic() < deadline:
            self.guarded(self.collect_and_record)
            self.waker.wait(min(0.2, max(0.0, deadline - time.monotonic())))
        self.guarded(self.collect_and_record)
        unfinished = [r for pool in self.pools for r in pool.in_hand.values()]
        self.give_back([r.job for r in unfinished], deadline + DRAIN_MARGIN_SECS / 2,
                       "not finished in time")
        for running in unfinished:
            self.finish_span(Outcome(running, ok=False), "released")
        for pool in self.pools:
            pool.close()
        self.listener.close()
        self.handler_db.close(timeout=0.5)
        self.queue_db.close()
        super().shutdown()

    def collect_and_record(self) -> None:
        self.collect_outcomes()
        self.expire_overdue_jobs()
        self.record_outcomes()

    def give_back(self, claimed: list[ClaimedJob], deadline: float, why: str) -> None:
        while claimed and time.monotonic() < deadline:
            if self.guarded(lambda: self.connection().release(claimed)):
                log.info("gave back %d jobs (%s)", len(claimed), why,
                         extra={"event": "worker.released", "count": len(claimed)})
                return
            time.sleep(0.1)
        if claimed:
            log.warning("could not give back %d jobs; they return to pending when this node "
                        "is declared dead", len(claimed), extra={"event": "worker.release_failed"})


def _use_cursor(cursor: type[psycopg.Cursor], conn: psycopg.Connection) -> None:
    conn.cursor_factory = cursor


def _describe(exc: BaseException) -> str:
    trace = "".join(traceback.format_exception(exc)).rstrip()
    return f"{type(exc).__name__}: {exc}\n{trace}"
