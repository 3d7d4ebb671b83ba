"""Structured log lines on stdout: one JSON object per event (or plain text for humans).

Every line carries the process's role and node id, and inside a request or a job its
trace_id, span_id and request_id or job_id; `extra={...}` fields passed to a logging call
become fields of the line, so `log.info("...", extra={"event": "role.started"})` gives an
operator something to filter on. Secrets never go into `extra`.

Console lines always work, whatever [observability] says; with logs exported, the same
records also go over OTLP. OpenTelemetry's own complaints (a collector that is down) reach
the console at most once a minute per logger, and never the OTLP handler (which would feed
its own failures back to itself).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any, NamedTuple, TextIO

from opentelemetry import trace

from .. import redaction

_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName"}


class RequestIds(NamedTuple):
    """A request's ids, as its response headers give them: trace and span ids in hex."""

    request_id: str
    trace_id: str
    span_id: str
    sampled: bool


REQUEST: contextvars.ContextVar[RequestIds | None] = contextvars.ContextVar("request",
                                                                           default=None)
JOB_ID: contextvars.ContextVar[int | None] = contextvars.ContextVar("job_id", default=None)
OTEL_LOGGER_PREFIX = "opentelemetry"
OTEL_COMPLAINT_INTERVAL_SECS = 60.0


class ProcessContext(logging.Filter):
    """Stamps role and node id, and the current trace, request or job, on every record."""

    def __init__(self, role: str, node_id: str | None) -> None:
        super().__init__()
        self.role = role
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        record.node_id = self.node_id
        request = REQUEST.get()
        if not hasattr(record, "trace_id"):
            span = trace.get_current_span().get_span_context()
            if span.is_valid:  # the innermost span: a function's or a job's, the app's own
                record.trace_id = format(span.trace_id, "032x")
                record.span_id = format(span.span_id, "016x")
            elif request is not None:
                record.trace_id, record.span_id = request.trace_id, request.span_id
        if request is not None and not hasattr(record, "request_id"):
            record.request_id = request.request_id
        job_id = JOB_ID.get()
        if job_id is not None and not hasattr(record, "job_id"):
            record.job_id = job_id
        return True


class OncePerInterval(logging.Filter):
    """Lets through one record per logger per interval from loggers under `prefix`."""

    def __init__(self, prefix: str, interval_secs: float) -> None:
        super().__init__()
        self.prefix = prefix
        self.interval_secs = interval_secs
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefix):
            return True
        now = time.monotonic()
        if now - self._last.get(record.name, -self.interval_secs) < self.interval_secs:
            return False
        self._last[record.name] = now
        return True


_context: logging.Filter = logging.Filter()  # this process's ProcessContext, once configured


class NotFrom(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(self.prefix)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redaction.scrub(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = redaction.scrub(self.formatException(record.exc_info))
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """One event, one line: control characters (a newline in a request path, a terminal
    escape) are written as escapes, so no input can forge a line or repaint a terminal. A
    traceback follows on the same line, its newlines escaped too."""

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
        return redaction.scrub(text).translate(_ESCAPES)


# C0, DEL and C1 control characters, as Python would write them in a string
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))} | {
    0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}


def configure(role: str, node_id: str | None = None, level: str = "info",
              fmt: str = "json", stream: TextIO | None = None) -> None:
    """Replace every root handler with one that writes this process's lines."""
    global _context
    _context = ProcessContext(role, node_id)
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_context)
    handler.addFilter(OncePerInterval(OTEL_LOGGER_PREFIX, OTEL_COMPLAINT_INTERVAL_SECS))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def attach_otlp_handler(logger_provider: Any, level: str) -> None:
    """Send this process's records over OTLP too (see otel.py)."""
    from opentelemetry.sdk._logs import LoggingHandler

    handler = LoggingHandler(level=level.upper(), logger_provider=logger_provider)
    handler.addFilter(NotFrom(OTEL_LOGGER_PREFIX))
    handler.addFilter(_context)
    logging.getLogger().addHandler(handler)


def detach_otlp_handler() -> None:
    from opentelemetry.sdk._logs import LoggingHandler

    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, LoggingHandler)]:
        root.removeHandler(handler)


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"
