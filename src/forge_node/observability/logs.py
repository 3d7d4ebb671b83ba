"""Structured log lines on stdout: one JSON object per event (or plain text for humans).

Every line carries the process's role and node id; `extra={...}` fields passed to a logging
call become fields of the line, so `log.info("...", extra={"event": "child.exited"})` gives an
operator something to filter on. Secrets never go into `extra`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName"}


class ProcessContext(logging.Filter):
    """Stamps role and node id on every record of this process."""

    def __init__(self, role: str, node_id: str | None) -> None:
        super().__init__()
        self.role = role
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        record.node_id = self.node_id
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{key}={value}" for key, value in vars(record).items()
                          if key not in _STANDARD_ATTRS and key not in ("role", "node_id")
                          and value is not None)
        text = (f"{_timestamp(record.created)} {record.levelname:<7} "
                f"[{getattr(record, 'role', '-')}] {record.getMessage()}")
        if extras:
            text += f" ({extras})"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure(role: str, node_id: str | None = None, level: str = "info",
              fmt: str = "json", stream: TextIO | None = None) -> None:
    """Replace every root handler with one that writes this process's lines."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ProcessContext(role, node_id))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"
