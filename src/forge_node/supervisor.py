"""The supervisor: one single-threaded process per node that forks one child per role and
keeps them alive, heartbeats the node into the registry, and drains on SIGTERM.

    boot:  signals, register the node (starting)
    loop:  wait -> signals -> reap -> reports -> silent children -> respawns -> services
    drain: row to draining, STOPPING=1, SIGTERM to children, wait up to drain_timeout_secs,
           SIGKILL what is left
    exit:  deregister, close; 0, or 78 when a child failed with a configuration error

It holds no database connection across a fork: the services' connection is closed before
each fork and opened again on the next round.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import signal
import time
from dataclasses import dataclass

import psycopg
import setproctitle

from . import __version__, cluster, db, linux, live
from .app import AppRegistry
from .backoff import Backoff
from .cluster import NodeIdentity
from .config import Config
from .errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from .notify import sd_notify
from .process import READY, ChildContext, spawn
from .roles import ROLE_PROCESSES, processes_for
from .services import ServiceRunner
from .services.cleaner import RetentionCleaner
from .services.heartbeat import Heartbeat
from .services.livechanges import LiveChangesPruner
from .services.reaper import DeadNodeReaper
from .services.reclaim import ReclaimJobsOfDeadNodes
from .services.restarts import RestartCounts
from .wakeup import Waker

log = logging.getLogger(__name__)

CHILD_SILENCE_LIMIT_SECS = 30.0   # a child that stops reporting for this long is killed
STABLE_AFTER_SECS = 30.0          # a child that lived this long restarts without backoff
MAX_SLEEP_SECS = 1.0
OPEN_FILES_MARGIN = 256           # a gateway worker's files besides its connections
MAX_OPEN_FILES = 1 << 20          # fs.nr_open's default, when the hard limit is unlimited

RUNNING, DRAINING, FORCED = "running", "draining", "forced"
STOPPED_LAST = frozenset({"monitor"})


@dataclass
class Child:
    pid: int
    report_fd: int
    started_at: float
    last_report: float
    ready: bool = False
    pipe_open: bool = True


@dataclass
class RoleSlot:
    role: str
    child: Child | None = None
    failures: int = 0
    restarts: int = 0
    respawn_at: float | None = 0.0
    stop_sent: bool = False


class Supervisor:
    def __init__(self, config: Config, database_url: str, direct_url: str, app: AppRegistry,
                 node: NodeIdentity) -> None:
        self.config = config
        self.database_url = database_url
        self.direct_url = direct_url  # the supervisor's own work: locks, the registry
        self.app = app
        self.node = node
        processes = processes_for(config)
        self.slots = {role: RoleSlot(role) for role in processes}
        self.state = RUNNING
        self.exit_code = EXIT_OK
        self.ever_ready = False
        self.reported_status = ""
        self.drain_deadline = 0.0
        self.pending_signals: list[int] = []
        self.waker = Waker()
        self.backoff = Backoff(base=1.0, factor=2.0, cap=30.0, jitter=0.1)
        timing = config.cluster
        self.services = ServiceRunner(db.Dedicated(
            direct_url, self._purpose, statement_timeout_secs=5), [
            Heartbeat(self.node, self.node_status, timing.heartbeat_interval_secs),
            DeadNodeReaper(timing.dead_threshold_secs, timing.heartbeat_interval_secs),
            ReclaimJobsOfDeadNodes(timing.heartbeat_interval_secs),
            RetentionCleaner(config.worker.retention_secs),
            RestartCounts(self.node.id, self.restart_counts, timing.heartbeat_interval_secs),
        ] + ([LiveChangesPruner()] if live.live_tables(app) else []))

    def run(self) -> int:
        """Supervise until stopped; the return value is the process's exit code."""
        self.boot()
        try:
            while not self.finished():
                self.wait_for_events()
                self.handle_signals()
                self.reap_children()
                self.kill_silent_children()
                self.stop_last_roles()
                self.spawn_due_roles()
                self.report_status()
                self.services.run_due()
        except Exception:
            log.exception("the supervisor failed; stopping the node",
                          extra={"event": "node.supervisor_failed"})
            self.exit_code = EXIT_FAILURE
            self.kill_children(signal.SIGKILL)
        finally:
            self.shutdown()
        return self.exit_code

    # -- lifecycle -------------------------------------------------------------------------

    def boot(self) -> None:
        setproctitle.setproctitle("forge-node: supervisor")
        linux.adopt_orphans()
        raise_open_files_limit(self.open_files_needed())
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD,
                       signal.SIGHUP):
            signal.signal(signum, self._record_signal)
        self.waker.install()
        log.info("node %s starting: roles %s on %s", self.node.id, ",".join(self.node.roles),
                 db.redact(self.database_url),
                 extra={"event": "node.starting", "roles": list(self.node.roles),
                        "version": __version__})
        self.services.run_now("heartbeat")

    def finished(self) -> bool:
        return self.state != RUNNING and not self.live_children()

    def shutdown(self) -> None:
        """Leave the registry and release everything; children are gone by now."""
        self._deregister()
        self.services.disconnect()
        for slot in self.slots.values():
            if slot.child is not None:
                os.close(slot.child.report_fd)
        signal.set_wakeup_fd(-1)
        self.waker.close()
        log.info("node %s stopped", self.node.id,
                 extra={"event": "node.stopped", "exit_code": self.exit_code})

    # -- signals: handlers only record; the loop calls handle_<name> -----------------------

    def _record_signal(self, signum: int, frame: object) -> None:
        self.pending_signals.append(signum)

    def handle_signals(self) -> None:
        while self.pending_signals:
            signum = self.pending_signals.pop(0)
            name = signal.Signals(signum).name[3:].lower()
            getattr(self, f"handle_{name}")()

    def handle_term(self) -> None:
        """SIGTERM: stop gracefully; running work finishes within drain_timeout_secs."""
        self.begin_drain("SIGTERM")

    def handle_int(self) -> None:
        """SIGINT: like SIGTERM; a second SIGINT stops at once."""
        if self.state == RUNNING:
            self.begin_drain("SIGINT")
        else:
            self.force_stop("second SIGINT")

    def handle_quit(self) -> None:
        """SIGQUIT: stop at once, killing the children without a drain."""
        self.force_stop("SIGQUIT")

    def handle_hup(self) -> None:
        """SIGHUP: nothing to reload in place; restart the node to read forge.toml again."""
        log.info("SIGHUP ignored: restart the node to apply a changed forge.toml",
                 extra={"event": "node.sighup_ignored"})

    def handle_chld(self) -> None:
        """SIGCHLD: a child exited; reap_children() collects it on this turn."""

    def begin_drain(self, reason: str) -> None:
        if self.state != RUNNING:
            return
        self.state = DRAINING
        self.drain_deadline = time.monotonic() + self.config.node.drain_timeout_secs
        log.info("draining (%s): stopping roles, at most %.0f s", reason,
                 self.config.node.drain_timeout_secs, extra={"event": "node.draining"})
        sd_notify("STOPPING=1")
        self.services.run_now("heartbeat")
        for slot in self.slots.values():
            slot.respawn_at = None
        for slot in self.live_children():
            if slot.role not in STOPPED_LAST:
                self.signal_child(slot.child, signal.SIGTERM)

    def stop_last_roles(self) -> None:
        """Once the other roles are gone, stop the monitor (its probe answers 503 until then)."""
        live = self.live_children()
        if self.state == DRAINING and all(slot.role in STOPPED_LAST for slot in live):
            for slot in live:
                if not slot.stop_sent:
                    slot.stop_sent = True
                    self.signal_child(slot.child, signal.SIGTERM)

    def force_stop(self, reason: str) -> None:
        log.warning("stopping at once (%s): killing the roles", reason,
                    extra={"event": "node.forced_stop"})
        if self.state == RUNNING:
            self.services.run_now("heartbeat")
        self.state = FORCED
        for slot in self.slots.values():
            slot.respawn_at = None
        self.kill_children(signal.SIGKILL)

    # -- children --------------------------------------------------------------------------

    def live_children(self) -> list[RoleSlot]:
        return [slot for slot in self.slots.values() if slot.child is not None]

    def wait_for_events(self) -> None:
        timeout = min(MAX_SLEEP_SECS, self.services.seconds_until_due(),
                      self.seconds_until_respawn())
        fds = [slot.child.report_fd for slot in self.live_children() if slot.child.pipe_open]
        for fd in self.waker.wait(timeout, fds):
            self.read_reports(fd)

    def read_reports(self, fd: int) -> None:
        slot = next(s for s in self.live_children() if s.child.report_fd == fd)
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if not data:
            slot.child.pipe_open = False  # the child is exiting; reap_children() follows
            return
        slot.child.last_report = time.monotonic()
        if READY in data and not slot.child.ready:
            slot.child.ready = True
            log.info("%s ready (pid %d)", slot.role, slot.child.pid,
                     extra={"event": "role.ready", "child_role": slot.role})

    def seconds_until_respawn(self) -> float:
        """Wake for the next restart when it is due, so a backoff is as long as it says."""
        due = [slot.respawn_at for slot in self.slots.values()
               if slot.child is None and slot.respawn_at is not None]
        return max(0.0, min(due) - time.monotonic()) if due else MAX_SLEEP_SECS

    def spawn_due_roles(self) -> None:
        now = time.monotonic()
        for slot in self.slots.values():
            if slot.child is None and slot.respawn_at is not None and now >= slot.respawn_at:
                self.spawn_role(slot)

    def spawn_role(self, slot: RoleSlot) -> None:
        self.services.disconnect()  # nothing of psycopg may be open across a fork
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        supervisor_fds = (*self.waker.fds, read_fd,
                          *(s.child.report_fd for s in self.live_children()))
        ctx = ChildContext(slot.role, self.config, self.database_url, self.direct_url,
                           self.node.id, self.app,
                           os.getpid(), write_fd, supervisor_fds)
        pid = spawn(ROLE_PROCESSES[slot.role](ctx))
        os.close(write_fd)
        now = time.monotonic()
        slot.child = Child(pid, read_fd, now, now)
        slot.respawn_at = None
        log.info("started %s (pid %d)", slot.role, pid,
                 extra={"event": "role.started", "child_role": slot.role, "pid": pid})

    def reap_children(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.live_children() if s.child.pid == pid), None)
            if slot is not None:
                self.on_child_exit(slot, status)
            else:
                log.debug("reaped orphan %d (%s)", pid, _describe_exit(status))

    def on_child_exit(self, slot: RoleSlot, status: int) -> None:
        child = slot.child
        slot.child = None
        self._drain_final_reports(child)
        os.close(child.report_fd)
        how = _describe_exit(status)
        if self.state != RUNNING:
            log.info("%s (pid %d) stopped: %s", slot.role, child.pid, how,
                     extra={"event": "role.stopped", "child_role": slot.role})
            return
        lived = time.monotonic() - child.started_at
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_CONFIG:
            log.error("%s (pid %d) failed with a configuration error; stopping the node",
                      slot.role, child.pid, extra={"event": "role.config_error",
                                                    "child_role": slot.role})
            self.exit_code = EXIT_CONFIG
            self.begin_drain(f"{slot.role} configuration error")
            return
        slot.failures = 1 if lived >= STABLE_AFTER_SECS else slot.failures + 1
        slot.restarts += 1
        delay = self.backoff.delay(slot.failures)
        slot.respawn_at = time.monotonic() + delay
        log.error("%s (pid %d) died after %.1f s: %s; restarting in %.1f s", slot.role,
                  child.pid, lived, how, delay,
                  extra={"event": "role.died", "child_role": slot.role, "exit": how,
                         "restart_in_secs": round(delay, 2), "failures": slot.failures})
        self.services.run_now("restarts")

    def _drain_final_reports(self, child: Child) -> None:
        try:
            if READY in os.read(child.report_fd, 4096):
                child.ready = True
        except (BlockingIOError, OSError):
            pass

    def kill_silent_children(self) -> None:
        now = time.monotonic()
        if self.state == DRAINING and now >= self.drain_deadline:
            for slot in self.live_children():
                log.warning("%s (pid %d) did not stop within %.0f s; killing it", slot.role,
                            slot.child.pid, self.config.node.drain_timeout_secs,
                            extra={"event": "role.drain_timeout", "child_role": slot.role})
            self.kill_children(signal.SIGKILL)
            return
        if self.state != RUNNING:
            return
        for slot in self.live_children():
            if now - slot.child.last_report > CHILD_SILENCE_LIMIT_SECS:
                log.error("%s (pid %d) has not reported for %.0f s; killing it", slot.role,
                          slot.child.pid, now - slot.child.last_report,
                          extra={"event": "role.silent", "child_role": slot.role})
                self.signal_child(slot.child, signal.SIGKILL)

    def kill_children(self, signum: int) -> None:
        for slot in self.live_children():
            self.signal_child(slot.child, signum)

    def signal_child(self, child: Child, signum: int) -> None:
        try:
            os.kill(child.pid, signum)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise

    def open_files_needed(self) -> int:
        """A gateway worker's connections, and a margin for its pools, logs and pipes."""
        if "gateway" not in self.config.node.roles:
            return 0
        return self.config.gateway.max_connections + OPEN_FILES_MARGIN

    # -- the node's status -----------------------------------------------------------------

    def restart_counts(self) -> dict[str, int]:
        """How many times each role was restarted after it died, for `forge-node status`."""
        return {slot.role: slot.restarts for slot in self.slots.values() if slot.restarts}

    def node_status(self) -> str:
        if self.state != RUNNING:
            return "draining"
        if not self.ever_ready:
            return "starting"
        return "active" if self.all_ready() else "degraded"

    def all_ready(self) -> bool:
        return all(slot.child is not None and slot.child.ready for slot in self.slots.values())

    def report_status(self) -> None:
        """Write status changes at once (not at the next heartbeat); once every role is up for
        the first time, the row says active before the log line and systemd hear "ready"."""
        became_ready = self.state == RUNNING and not self.ever_ready and self.all_ready()
        self.ever_ready = self.ever_ready or became_ready
        status = self.node_status()
        if status != self.reported_status:
            self.reported_status = status
            if status == "degraded":
                down = [s.role for s in self.slots.values() if not (s.child and s.child.ready)]
                log.warning("node degraded: %s not up", ", ".join(down),
                            extra={"event": "node.degraded", "roles_down": down})
            self.services.run_now("heartbeat")
        if became_ready:
            log.info("node %s ready", self.node.id, extra={"event": "node.ready"})
            sd_notify("READY=1")

    @property
    def _purpose(self) -> str:
        return f"supervisor {str(self.node.id)[:8]}"

    def _connect(self) -> psycopg.Connection:
        return db.connect(self.direct_url, self._purpose, statement_timeout_secs=5)

    def _deregister(self) -> None:
        try:
            with self._connect() as conn:
                cluster.deregister_node(conn, self.node.id)
        except Exception as exc:  # the node is stopping anyway; the reaper will mark it dead
            log.warning("could not remove this node from the registry: %s", db.first_line(exc),
                        extra={"event": "node.deregister_failed"})


def raise_open_files_limit(needed: int) -> None:
    """Every open connection is a file, and the soft limit is often 1,024: take the hard
    limit, for this process and the children it forks; say so when that is below `needed`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else hard
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("open files limit raised from %d to %d", soft, target,
                     extra={"event": "node.open_files_limit", "open_files": target})
            soft = target
        except (OSError, ValueError) as exc:
            log.warning("could not raise the open files limit from %d: %s", soft, exc,
                        extra={"event": "node.open_files_limit", "open_files": soft})
    if soft < needed:
        log.warning("the open files limit (%d) is below the %d that [gateway] max_connections "
                    "needs: raise it (LimitNOFILE= in systemd, ulimit -n) or lower "
                    "max_connections", soft, needed,
                    extra={"event": "node.open_files_too_low", "open_files": soft,
                           "needed": needed})


def _describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"
