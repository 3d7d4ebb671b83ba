"""Request ids: a client's own x-request-id is kept when it is sane (short, no spaces or
control characters), otherwise each request gets a new UUID. Trace ids come from the
request's span (see middleware.py)."""

from __future__ import annotations

import re
import uuid

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=\-]{1,128}$")


def request_id_from(header: str | None) -> str:
    if header and _REQUEST_ID.match(header):
        return header
    return str(uuid.uuid4())
