"""The scheduler role: fires the app's crons."""

from __future__ import annotations

from ..process import RoleProcess


class SchedulerProcess(RoleProcess):
    role = "scheduler"
