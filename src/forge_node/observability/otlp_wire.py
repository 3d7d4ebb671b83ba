"""OTLP trace export requests in protobuf wire format, written directly.

Building opentelemetry-proto message objects costs about 37 us per span here (every
attribute is two nested messages); writing the same bytes costs a fraction of that. The
field numbers are those of opentelemetry/proto/trace/v1/trace.proto and common.proto;
tests/unit/test_otlp_wire.py parses the output with opentelemetry-proto to prove it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5
_KINDS = {SpanKind.INTERNAL: 1, SpanKind.SERVER: 2, SpanKind.CLIENT: 3, SpanKind.PRODUCER: 4,
          SpanKind.CONSUMER: 5}
_STATUS = {StatusCode.UNSET: 0, StatusCode.OK: 1, StatusCode.ERROR: 2}
_UINT64 = (1 << 64) - 1


class EncodableSpan(Protocol):
    name: str
    context: SpanContext
    parent: SpanContext | None
    kind: SpanKind
    attributes: Mapping[str, Any]
    events: list[tuple[str, Mapping[str, Any] | None, int]]
    status: Status
    start_time: int
    end_time: int | None


def export_request(resource_attributes: bytes, scope: bytes, spans: Iterable[bytes]) -> bytes:
    """ExportTraceServiceRequest{resource_spans: [{resource, scope_spans: [{scope, spans}]}]}."""
    scope_spans = _field(1, scope) + b"".join(_field(2, span) for span in spans)
    resource_spans = _field(1, resource_attributes) + _field(2, scope_spans)
    return _field(1, resource_spans)


def resource(attributes: Mapping[str, Any]) -> bytes:
    """A Resource message's body: its attributes."""
    return attributes_of(attributes)


def scope(name: str, version: str) -> bytes:
    """An InstrumentationScope message's body."""
    return _field(1, name.encode()) + _field(2, version.encode())


def span(span: EncodableSpan) -> bytes:
    context = span.context
    out = [_TRACE_ID, context.trace_id.to_bytes(16, "big"),
           _SPAN_ID, context.span_id.to_bytes(8, "big")]
    if span.parent is not None:
        out += [_PARENT_SPAN_ID, span.parent.span_id.to_bytes(8, "big")]
    out += [_field(5, span.name.encode()), _KIND_FIELDS[span.kind],
            _START_TIME, _FIXED64_VALUE.pack(span.start_time),
            _END_TIME, _FIXED64_VALUE.pack(span.end_time or span.start_time),
            attributes_of(span.attributes, field=9)]
    for name, attributes, at in span.events:
        out.append(_field(11, _EVENT_TIME + _FIXED64_VALUE.pack(at) + _field(2, name.encode())
                          + attributes_of(attributes or {}, field=3)))
    status = span.status
    description = _field(2, status.description.encode()) if status.description else b""
    out += [_field(15, description + _STATUS_CODE_FIELDS[status.status_code]),
            _FLAGS, _FIXED32_VALUE.pack(int(context.trace_flags))]
    return b"".join(out)


def attributes_of(attributes: Mapping[str, Any], field: int = 1) -> bytes:
    """Repeated KeyValue at `field`: bools, ints and floats keep their type, the rest are
    strings."""
    tag = _LENGTH_DELIMITED[field]
    out = []
    for key, value in attributes.items():
        encoded_key = _KEYS.get(key)
        if encoded_key is None:
            encoded_key = _field(1, str(key).encode())
            if len(_KEYS) < _MAX_KEYS:
                _KEYS[key] = encoded_key
        key_value = encoded_key + _field(2, _any_value(value))
        size = len(key_value)
        out.append(tag + (bytes((size,)) if size < 0x80 else _varint(size)) + key_value)
    return b"".join(out)


def _any_value(value: Any) -> bytes:
    if isinstance(value, str):
        return _field(1, value.encode())
    if isinstance(value, bool):
        return _BOOL_VALUES[value]
    if isinstance(value, int):
        return _INT_VALUE + _varint(value & _UINT64)
    if isinstance(value, float):
        return _DOUBLE_VALUE + _FIXED64_DOUBLE.pack(value)
    return _field(1, str(value).encode())


def _field(number: int, body: bytes) -> bytes:
    """A length-delimited field: bytes, a string or an embedded message."""
    size = len(body)
    return _LENGTH_DELIMITED[number] + (bytes((size,)) if size < 0x80 else _varint(size)) + body


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


# Tags, fixed fields and attribute keys (forge-node's own few names), encoded once: most of
# a span is these.
_KEYS: dict[str, bytes] = {}
_MAX_KEYS = 1024
_LENGTH_DELIMITED = [_tag(number, _BYTES) for number in range(16)]
_FIXED64_VALUE, _FIXED32_VALUE, _FIXED64_DOUBLE = (struct.Struct("<Q"), struct.Struct("<I"),
                                                   struct.Struct("<d"))
_TRACE_ID, _SPAN_ID, _PARENT_SPAN_ID = (_LENGTH_DELIMITED[1] + b"\x10",
                                        _LENGTH_DELIMITED[2] + b"\x08",
                                        _LENGTH_DELIMITED[4] + b"\x08")
_START_TIME, _END_TIME, _EVENT_TIME = _tag(7, _FIXED64), _tag(8, _FIXED64), _tag(1, _FIXED64)
_FLAGS = _tag(16, _FIXED32)
_KIND_FIELDS = {kind: _tag(6, _VARINT) + _varint(number) for kind, number in _KINDS.items()}
_STATUS_CODE_FIELDS = {code: _tag(3, _VARINT) + _varint(number) if number else b""
                       for code, number in _STATUS.items()}
_BOOL_VALUES = {value: _tag(2, _VARINT) + _varint(int(value)) for value in (False, True)}
_INT_VALUE, _DOUBLE_VALUE = _tag(3, _VARINT), _tag(4, _FIXED64)
