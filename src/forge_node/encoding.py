"""JSON for function and job results: rows become objects, and dates, UUIDs, Decimals, bytes and
sets encode the way an API client expects. And strict JSON from clients: `loads` refuses what
JSON does not have (NaN, infinities, lone surrogates, other encodings than UTF-8) and what
would exhaust the parser (deep nesting), so hostile bodies get a 400, never a 500."""

from __future__ import annotations

import base64
import datetime
import decimal
import enum
import json
import math
import re
import uuid
from itertools import accumulate
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


# one, not one per call; NaN and infinities raise ValueError: JSON has no such values
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def dumps(value: Any) -> str:
    return _ENCODER.encode(value)


class JsonRejected(ValueError):
    """A client's JSON refused; the message says why, for a 400."""


# A JSON string with its escapes, matched without backtracking (possessive quantifiers)
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256  # what each bracket does to the depth
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def loads(raw: bytes, max_depth: int) -> Any:
    """Strict JSON in UTF-8, nested at most `max_depth` levels; JsonRejected otherwise."""
    try:
        text = raw.decode("utf-8")  # strict: bytes of surrogates are refused here too
    except UnicodeDecodeError as exc:
        raise JsonRejected(f"not UTF-8 (byte {exc.start})") from None
    if _too_deep(raw, max_depth):  # before parsing: the parser recurses, once per level
        raise JsonRejected(f"nested deeper than {max_depth} levels")
    try:
        value = _DECODER.decode(text)
    except JsonRejected:
        raise
    except ValueError as exc:  # JSONDecodeError, or an integer of over 4300 digits
        raise JsonRejected(f"not valid JSON ({exc})") from None
    if _SURROGATE_ESCAPE.search(raw) and _holds_lone_surrogate(value):
        raise JsonRejected("a string holds a lone surrogate (\\ud800-\\udfff), which is not text")
    return value


def _too_deep(raw: bytes, max_depth: int) -> bool:
    """Whether arrays and objects nest deeper than `max_depth`, brackets inside strings aside.
    Counting them first settles nearly every body at C speed."""
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return False
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > max_depth


def _refuse_constant(name: str) -> Any:
    raise JsonRejected(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise JsonRejected(f"the number {text[:20]} is too large for a double")
    return value


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)  # one,
# not one per call as json.loads builds with these arguments


def _holds_lone_surrogate(value: Any) -> bool:
    """A pair of escapes decodes to one character; only a lone half is left as a surrogate."""
    try:
        dumps(value).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
