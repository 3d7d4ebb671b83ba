"""A child of the supervisor: one class per process kind, one lifecycle.

    main():  detach_from_supervisor() -> boot() -> run() (reports ready) -> shutdown()

`__init__` does nothing to the process. `detach_from_supervisor` undoes what fork copied
from the supervisor (signal handlers, the wakeup pipe, atexit hooks, its file descriptors,
NOTIFY_SOCKET) and asks the kernel for SIGTERM when the supervisor dies. Children end with
`os._exit`, never `sys.exit`, so the supervisor's atexit hooks (pgserver's among them) do not
run twice.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import psycopg
import setproctitle

from . import db, linux
from .app import AppRegistry
from .config import Config
from .errors import EXIT_FAILURE, EXIT_OK, DatabaseUnavailable
from .observability import logs
from .observability.otel import Telemetry
from .wakeup import Waker

log = logging.getLogger(__name__)

REPORT_INTERVAL_SECS = 1.0
RECONNECT_DELAY_SECS = 1.0
READY = b"R"
ALIVE = b"H"
_INHERITED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                      signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2)


@dataclass(frozen=True)
class ChildContext:
    role: str
    config: Config
    database_url: str  # for statements that keep nothing past their transaction
    direct_url: str  # for session work: locks, LISTEN (differs behind a pooler)
    node_id: uuid.UUID
    app: AppRegistry
    supervisor_pid: int
    report_fd: int
    inherited_fds: tuple[int, ...]


    @property
    def pooled(self) -> bool:
        """Whether database_url goes through a transaction-mode pooler."""
        return self.direct_url != self.database_url


class ReportPipe:
    """The child's end of its pipe to the supervisor: "ready" once, then "alive" each second."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, message: bytes) -> None:
        try:
            os.write(self.fd, message)
        except (BlockingIOError, BrokenPipeError):
            pass  # a full pipe means the supervisor is busy; a broken one, that it is gone


class RoleProcess:
    role: ClassVar[str] = ""

    def __init__(self, ctx: ChildContext) -> None:
        self.ctx = ctx
        self.stopping = False
        self.reports = ReportPipe(ctx.report_fd)
        self.waker: Waker | None = None
        self.database_lost_at: float | None = None
        self.next_report_at = 0.0
        self.telemetry: Telemetry | None = None

    def main(self) -> int:
        self.detach_from_supervisor()
        self.boot()
        self.run()
        self.shutdown()
        return EXIT_OK

    def detach_from_supervisor(self) -> None:
        for signum in _INHERITED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        atexit._clear()
        os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the supervisor only, which drains us
        end_with_parent(self.ctx.supervisor_pid)
        for fd in self.ctx.inherited_fds:
            _close_quietly(fd)
        os.environ.pop("NOTIFY_SOCKET", None)
        setproctitle.setproctitle(f"forge-node: {self.role}")
        obs = self.ctx.config.observability
        logs.configure(self.role, str(self.ctx.node_id), obs.log_level, obs.log_format)

    @property
    def purpose(self) -> str:
        """How this process names its database connections (their application_name)."""
        return f"{self.role} {str(self.ctx.node_id)[:8]}"

    def boot(self) -> None:
        """After-fork setup of a plain role process: its signals, its wakeup pipe and its
        telemetry."""
        self.install_signal_handlers()
        config = self.ctx.config
        self.telemetry = Telemetry.start(config.observability, config.project.name, self.role,
                                         str(self.ctx.node_id))

    def install_signal_handlers(self) -> None:
        """The wakeup pipe, and SIGTERM/SIGINT to stop: every caught signal wakes the loop."""
        self.waker = Waker()
        self.waker.install()
        signal.signal(signal.SIGTERM, self.handle_stop)
        signal.signal(signal.SIGINT, self.handle_stop)

    def run(self) -> None:
        """Report ready, then turn until stopped: tick, one guarded step of work, wait."""
        self.reports.send(READY)
        while not self.stopping:
            self.tick()
            self.guarded(self.run_once)
            self.wait()

    def run_once(self) -> None:
        """One turn of the role's work; the database may fail under it (see guarded)."""

    def next_deadline(self) -> float:
        """When (time.monotonic()) the role next has work of its own to do; events on
        `wake_fds()` and signals wake it earlier. Never: math.inf."""
        return math.inf

    def wake_fds(self) -> list[int]:
        """Sockets whose readability means work (a LISTEN connection, a probe server)."""
        return []

    def wait(self) -> None:
        """Sleep until the role's next deadline, a wake-up, or the next report is due.

        While the database is lost, work cannot start before the next retry: a deadline
        already in the past (a due poll, an outcome to record) and a socket that stays
        readable (a dead connection's end of file) wait for that retry instead of turning
        the loop at once."""
        assert self.waker is not None
        if self.stopping:
            return
        deadline, fds = self.next_deadline(), self.wake_fds()
        if self.database_lost_at is not None:
            deadline, fds = max(deadline, self.database_lost_at + RECONNECT_DELAY_SECS), []
        timeout = min(self.next_report_at, deadline) - time.monotonic()
        self.waker.wait(max(0.0, timeout), fds)

    def guarded(self, step: Callable[[], object]) -> bool:
        """Run a step. A lost database is logged once, `database_lost()` drops what it broke,
        and the step is tried again on a later turn (not before RECONNECT_DELAY_SECS)."""
        now = time.monotonic()
        if self.database_lost_at is not None and \
                now - self.database_lost_at < RECONNECT_DELAY_SECS:
            return False
        try:
            step()
        except (psycopg.OperationalError, psycopg.InterfaceError, DatabaseUnavailable) as exc:
            if self.database_lost_at is None:
                log.warning("%s lost the database: %s; retrying", self.role, db.first_line(exc),
                            extra={"event": "role.database_lost"})
            self.database_lost_at = now
            self.database_lost()
            return False
        except psycopg.Error:
            log.exception("a %s step failed; retrying", self.role,
                          extra={"event": "role.step_failed"})
            self.database_lost_at = now  # wait a moment before the next try
            return False
        if self.database_lost_at is not None:
            log.info("%s reached the database again", self.role,
                     extra={"event": "role.database_back"})
            self.database_lost_at = None
        return True

    def database_lost(self) -> None:
        """Drop the connections a database outage broke; they are opened again on use."""

    def tick(self) -> None:
        """Once per REPORT_INTERVAL_SECS, however often the loop turns: tell the supervisor
        this process is alive, and stop if the supervisor is gone."""
        now = time.monotonic()
        if now < self.next_report_at:
            return
        self.next_report_at = now + REPORT_INTERVAL_SECS
        self.reports.send(ALIVE)
        if os.getppid() != self.ctx.supervisor_pid:
            log.warning("the supervisor is gone; stopping", extra={"event": "role.orphaned"})
            self.stop()

    def handle_stop(self, signum: int, frame: object) -> None:
        """SIGTERM/SIGINT from the supervisor: finish current work and exit."""
        self.stop()

    def stop(self) -> None:
        self.stopping = True
        if self.waker is not None:
            self.waker.wake()

    def shutdown(self) -> None:
        """Release what boot() built; subclasses drain their work first, then call this."""
        if self.telemetry is not None:
            self.telemetry.shutdown()


def spawn(process: RoleProcess) -> int:
    """Fork and run `process` in the child; return the child's pid in the parent."""
    pid = os.fork()
    if pid:
        return pid
    code = EXIT_FAILURE
    try:
        code = process.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None
                                                            else EXIT_FAILURE)
    except BaseException:
        log.exception("the %s role crashed", process.role, extra={"event": "role.crashed"})
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def end_with_parent(parent_pid: int) -> None:
    """Ask for SIGTERM when the parent dies, then check it did not die before we asked.
    (Elsewhere than Linux, a role's per-second parent check in tick() still ends orphans.)"""
    linux.die_with_parent(signal.SIGTERM)
    if os.getppid() != parent_pid:
        os._exit(EXIT_OK)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
