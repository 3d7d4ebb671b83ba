"""The scheduler role: scheduler nodes elect one leader, and the leader fires the app's crons.

Each tick is claimed in the same transaction that enqueues its job (a row per cron and
scheduled time in `forge_cron_ticks`), so a tick fires exactly once across the cluster,
during a failover and when two leaders briefly overlap. A leader proves its lock session
about once a second and before every tick, and stops leading at once when it is gone.

A scheduler sleeps until its next deadline: a leader until its next tick or leadership
check, a standby until its next attempt or a NOTIFY that the leader stood down.

When it becomes leader, a scheduler looks at the last tick each cron fired: ticks missed
since then are run (the last `catch_up_limit` of them) for crons with `catch_up=True`, and
skipped with a log line for the others. A cron never fired before starts from now.
"""

from __future__ import annotations

import datetime
import logging
import time

import psycopg
from opentelemetry import trace

from .. import crons, db, jobs
from ..app import CronSpec
from ..leader import LEADER_CHANNEL, LeaderElection
from ..listener import Listener
from ..process import RoleProcess

log = logging.getLogger(__name__)

LEADER_RETRY_SECS = 0.5


class SchedulerProcess(RoleProcess):
    role = "scheduler"

    def boot(self) -> None:
        super().boot()
        ctx = self.ctx
        self.crons = list(ctx.app.crons.values())
        self.election = LeaderElection(ctx.direct_url, "scheduler", ctx.node_id, self.purpose)
        self.listener = Listener(ctx.direct_url, (LEADER_CHANNEL,), self.purpose, log)
        self.next_fire: dict[str, datetime.datetime] = {}
        self.next_attempt = 0.0
        # for ticks (the lock has its own): single transactions, fine through a pooler
        self.db = db.Dedicated(ctx.database_url, self.purpose, pooled=ctx.pooled)

    def run_once(self) -> None:
        self.read_notifications()
        moment = now()
        if not self.election.is_leader:
            self.compete()
        elif not self.election.still_leader(before_acting=self.ticks_due(moment)):
            self.next_attempt = 0.0  # compete again at once
        else:
            self.fire_due_ticks(moment)

    def database_lost(self) -> None:
        self.election.close()
        self.db.close()
        self.next_attempt = time.monotonic() + LEADER_RETRY_SECS

    def connection(self) -> psycopg.Connection:
        return self.db.get()

    def read_notifications(self) -> None:
        if self.listener.poll():  # a leader stood down: try at once
            self.next_attempt = 0.0

    def compete(self) -> None:
        if time.monotonic() < self.next_attempt:
            return
        self.next_attempt = time.monotonic() + LEADER_RETRY_SECS
        if self.election.try_acquire():
            log.info("elected scheduler leader", extra={"event": "leader.elected",
                                                        "leader_role": "scheduler"})
            self.plan_after_election(now())

    def plan_after_election(self, moment: datetime.datetime) -> None:
        """Catch up (or skip) what was missed without a leader; plan every cron's next tick."""
        last = crons.last_ticks(self.connection())
        for cron in self.crons:
            self.next_fire[cron.name] = cron.schedule.next_after(moment)
            if cron.name not in last:
                continue
            missed = cron.schedule.ticks_between(last[cron.name], moment, 100_000)
            self.handle_missed(cron, missed)

    def handle_missed(self, cron: CronSpec, missed: list[datetime.datetime]) -> None:
        run = missed[-cron.catch_up_limit:] if cron.catch_up else []
        skipped = len(missed) - len(run)
        if skipped:
            log.warning("cron %s: skipped %d missed tick(s), the last scheduled for %s%s",
                        cron.name, skipped, missed[-len(run) - 1].isoformat(),
                        "" if cron.catch_up else " (catch_up is off)",
                        extra={"event": "cron.missed", "cron": cron.name, "skipped": skipped})
        for tick in run:
            self.fire(cron, tick)

    def ticks_due(self, moment: datetime.datetime) -> bool:
        return any(tick <= moment for tick in self.next_fire.values())

    def fire_due_ticks(self, moment: datetime.datetime) -> None:
        for cron in self.crons:
            due = []
            while self.next_fire[cron.name] <= moment:
                due.append(self.next_fire[cron.name])
                self.next_fire[cron.name] = cron.schedule.next_after(self.next_fire[cron.name])
            if len(due) > 1:  # this leader fell behind (a pause, a slow database)
                self.handle_missed(cron, due[:-1])
            if due:
                self.fire(cron, due[-1])

    def fire(self, cron: CronSpec, scheduled_for: datetime.datetime) -> None:
        """Claim the tick and enqueue its job in one transaction, in a cron.tick span that
        the job's run joins."""
        span = self.telemetry.start_span("cron.tick", attributes={
            "cron.name": cron.name, "cron.scheduled_for": scheduled_for.isoformat()})
        conn = self.connection()
        with trace.use_span(span, end_on_exit=True), conn.transaction():
            if not crons.claim_tick(conn, cron.name, scheduled_for, self.ctx.node_id):
                span.set_attribute("cron.outcome", "already_fired")
                return  # another leader fired it
            job_id = jobs.enqueue(conn, cron.job_type,
                                  {"scheduled_for": scheduled_for.isoformat()})
            crons.attach_job(conn, cron.name, scheduled_for, job_id)
            span.set_attribute("cron.outcome", "fired")
            span.set_attribute("job.id", job_id)
        log.info("cron %s fired for %s (job %d)", cron.name, scheduled_for.isoformat(), job_id,
                 extra={"event": "cron.tick", "cron": cron.name, "job_id": job_id,
                        "scheduled_for": scheduled_for.isoformat()})

    def next_deadline(self) -> float:
        """A leader's next tick or leadership check; a standby's next attempt."""
        if not self.election.is_leader:
            return self.next_attempt
        deadline = self.election.next_check_at
        if self.next_fire:
            until_tick = (min(self.next_fire.values()) - now()).total_seconds()
            deadline = min(deadline, time.monotonic() + until_tick)
        return deadline

    def wake_fds(self) -> list[int]:
        return self.listener.fds()

    def shutdown(self) -> None:
        """Stand down so that a standby takes over at once."""
        if self.election.is_leader:
            log.info("standing down as scheduler leader", extra={"event": "leader.resigned",
                                                                 "leader_role": "scheduler"})
        self.election.resign()
        self.listener.close()
        self.db.close()
        super().shutdown()


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
