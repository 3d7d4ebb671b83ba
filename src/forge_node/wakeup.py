"""Waking a sleeping loop from a signal handler without locks: the self-pipe.

Signal handlers in forge-node only record the signal; `signal.set_wakeup_fd` writes a byte
to this pipe so that the loop's `select` returns at once. (A threading.Event set from a
handler can deadlock with the very wait it interrupts.)
"""

from __future__ import annotations

import os
import select
import signal
from collections.abc import Iterable


class Waker:
    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        for fd in (self.read_fd, self.write_fd):
            os.set_blocking(fd, False)

    @property
    def fds(self) -> tuple[int, int]:
        return self.read_fd, self.write_fd

    def install(self) -> None:
        """Make every caught signal wake this process's loop."""
        signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)

    def wake(self) -> None:
        try:
            os.write(self.write_fd, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: the loop is already due to wake

    def wait(self, timeout: float | None, fds: Iterable[int] = ()) -> list[int]:
        """Sleep until woken, one of `fds` is readable, or `timeout`; return the readable fds."""
        watched = [self.read_fd, *fds]
        try:
            readable, _, _ = select.select(watched, [], [], timeout)
        except InterruptedError:
            return []
        if self.read_fd in readable:
            self._drain()
        return [fd for fd in readable if fd != self.read_fd]

    def _drain(self) -> None:
        try:
            while os.read(self.read_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
