"""The worker role: runs the app's background jobs."""

from __future__ import annotations

from ..process import RoleProcess


class WorkerProcess(RoleProcess):
    role = "worker"
