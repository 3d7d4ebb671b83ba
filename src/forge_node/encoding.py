"""JSON for function and job results: rows become objects, and dates, UUIDs, Decimals, bytes and
sets encode the way an API client expects."""

from __future__ import annotations

import base64
import datetime
import decimal
import enum
import json
import uuid
from typing import Any

_PLAIN = frozenset({str, int, float, bool, type(None)})


def to_jsonable(value: Any) -> Any:
    """Rows (named tuples) become objects; tuples and sets become arrays."""
    kind = type(value)
    if kind in _PLAIN:  # exact types first: this runs on every value of every answer
        return value
    if kind is dict:
        return {str(k): v if type(v) in _PLAIN else to_jsonable(v) for k, v in value.items()}
    if isinstance(value, str | int | float | bool):  # subclasses: enums of str or int
        return value
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return {k: to_jsonable(v) for k, v in value._asdict().items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    return _scalar(value)


def _scalar(value: Any) -> Any:
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)  # exact: a float would lose digits of money
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    raise TypeError(f"a {type(value).__name__} cannot be encoded as JSON")


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # one, not one per call


def dumps(value: Any) -> str:
    return _ENCODER.encode(value)
