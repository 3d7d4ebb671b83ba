"""The two prctl(2) calls a process supervisor needs on Linux (no-ops elsewhere), and a
liveness check of a local pid."""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(signum: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send `signum` to this process when its parent dies."""
    return _prctl(_PR_SET_PDEATHSIG, signum)


def adopt_orphans() -> bool:
    """Become the reaper of orphaned descendants (gunicorn workers whose master died), as
    PID 1 of a container is anyway; the supervisor's waitpid(-1) then collects them."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (any owner)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
