"""What an app function receives as `ctx`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg


@dataclass
class FunctionContext:
    """`ctx` of a query or mutation.

    db: the request's connection: a read-only transaction for a query (on a replica when
        `read_from_replica` is on), one transaction for a mutation, committed when the
        function returns and rolled back when it raises.
    auth: the verified token's claims, or None without a token.
    request_id: the id in the response's x-request-id header and in the logs.
    """

    db: psycopg.Connection
    auth: dict[str, Any] | None
    request_id: str
