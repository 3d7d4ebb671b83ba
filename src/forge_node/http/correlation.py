"""Request and trace ids: every response carries x-request-id, x-trace-id and x-span-id.

A client's own request id is kept when it is sane (short, no spaces or control characters);
an inbound W3C `traceparent` makes the request join that trace.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=\-]{1,128}$")
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclass(frozen=True)
class TraceParent:
    trace_id: str
    span_id: str
    sampled: bool


def request_id_from(header: str | None) -> str:
    if header and _REQUEST_ID.match(header):
        return header
    return str(uuid.uuid4())


def parse_traceparent(header: str | None) -> TraceParent | None:
    """The parent of this request's span, or None for a missing or invalid header."""
    match = _TRACEPARENT.match(header.strip().lower()) if header else None
    if not match:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff" or trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return TraceParent(trace_id, span_id, bool(int(flags, 16) & 1))


def new_trace_id() -> str:
    return secrets.token_hex(16)


def new_span_id() -> str:
    return secrets.token_hex(8)
