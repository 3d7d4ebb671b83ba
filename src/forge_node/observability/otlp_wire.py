"""OTLP trace export requests in protobuf wire format, written directly.

Building opentelemetry-proto message objects costs about 37 us per span here (every
attribute is two nested messages); writing the same bytes costs a fraction of that, and most
of a span's bytes repeat from one span to the next: tags, names, kinds and the attribute
pairs whose values come from a small set (methods, routes, status codes, function names,
outcomes), which are encoded once and kept. The field numbers are those of
opentelemetry/proto/trace/v1/trace.proto and common.proto; tests/unit/test_otlp_wire.py
parses the output with opentelemetry-proto to prove it.

The SDK's spans (the app's own, instrumentation packages') are written by `sdk_span` into the
same requests, under their own instrumentation scopes, with what forge-node's spans never
have: a trace state, links, array values and the counts the SDK's limits dropped.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5
_KINDS = {SpanKind.INTERNAL: 1, SpanKind.SERVER: 2, SpanKind.CLIENT: 3, SpanKind.PRODUCER: 4,
          SpanKind.CONSUMER: 5}
_STATUS = {StatusCode.UNSET: 0, StatusCode.OK: 1, StatusCode.ERROR: 2}
_UINT64 = (1 << 64) - 1


UNSET = Status(StatusCode.UNSET)  # immutable: a span's status until it is set


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


def export_request(resource_attributes: bytes,
                   spans_by_scope: Iterable[tuple[bytes, Iterable[bytes]]]) -> bytes:
    """ExportTraceServiceRequest{resource_spans: [{resource, scope_spans: [{scope, spans}]}]};
    each scope as `scope` returns it, its spans as `span` or `sdk_span` return them."""
    resource_spans = _field(1, resource_attributes) + b"".join(
        _field(2, _field(1, scope) + b"".join(spans)) for scope, spans in spans_by_scope)
    return _field(1, resource_spans)


def resource(attributes: Mapping[str, Any]) -> bytes:
    """A Resource message's body: its attributes."""
    return attributes_of(attributes)


def scope(name: str, version: str) -> bytes:
    """An InstrumentationScope message's body."""
    return _field(1, name.encode()) + _field(2, version.encode())


def span(span: EncodableSpan) -> bytes:
    """The span as ScopeSpans' repeated `spans` field (number 2), ready to join."""
    return _framed(_span_fields(span, span.events))


def sdk_span(span: ReadableSpan) -> bytes:
    """An ended span of the OpenTelemetry SDK, as `span` writes forge-node's."""
    out = _span_fields(span, [(e.name, e.attributes, e.timestamp) for e in span.events])
    trace_state = span.context.trace_state
    if trace_state:
        out.append(_field(3, trace_state.to_header().encode()))
    out += [_field(13, _link(link)) for link in span.links]
    for number, count in ((10, span.dropped_attributes), (12, span.dropped_events),
                          (14, span.dropped_links)):
        if count:
            out.append(_tag(number, _VARINT) + _varint(count))
    return _framed(out)


def _link(link: Link) -> bytes:
    """A Span.Link message's body."""
    context = link.context
    out = _IDS.pack(*_IDS_TAGS[0], context.trace_id >> 64, context.trace_id & _UINT64,
                    *_IDS_TAGS[1], context.span_id) + attributes_of(link.attributes or {}, 4)
    if context.trace_state:
        out += _field(3, context.trace_state.to_header().encode())
    if link.dropped_attributes:
        out += _tag(5, _VARINT) + _varint(link.dropped_attributes)
    return out + _LINK_FLAGS + _UINT32.pack(int(context.trace_flags))


def _span_fields(span: EncodableSpan, events: Iterable[tuple[str, Any, int]]) -> list[bytes]:
    """A span's fields, each encoded, in a list the SDK's spans add theirs to."""
    context = span.context
    trace_id = context.trace_id
    out = [_IDS.pack(*_IDS_TAGS[0], trace_id >> 64, trace_id & _UINT64, *_IDS_TAGS[1],
                     context.span_id)]
    if span.parent is not None:
        out.append(_PARENT_SPAN_ID.pack(*_PARENT_TAG, span.parent.span_id))
    name = _NAMES.get(span.name)
    if name is None:
        name = _remember(_NAMES, span.name, _field(5, span.name.encode()))
    out += [name, _KIND_FIELDS[span.kind._value_],  # the enum's hash is a Python call
            _TIMES.pack(_TIMES_TAGS[0], span.start_time, _TIMES_TAGS[1],
                        span.end_time or span.start_time),
            attributes_of(span.attributes, field=9)]
    for event_name, attributes, at in events:
        out.append(_field(11, _EVENT_TIME.pack(_EVENT_TIME_TAG, at)
                          + _field(2, event_name.encode())
                          + attributes_of(attributes or {}, field=3)))
    status = span.status
    if status is not UNSET:  # an absent status is unset
        description = _field(2, status.description.encode()) if status.description else b""
        out.append(_field(15, description + _STATUS_CODES[status.status_code]))
    out += [_FLAGS, _UINT32.pack(int(context.trace_flags))]
    return out


def _framed(fields: list[bytes]) -> bytes:
    body = b"".join(fields)
    size = len(body)
    if size < 0x4000:  # one span is a few hundred bytes: a two-byte length at most
        return (bytes((_SPAN_TAG, size)) if size < 0x80
                else bytes((_SPAN_TAG, size & 0x7F | 0x80, size >> 7))) + body
    return _field(2, body)


def attributes_of(attributes: Mapping[str, Any], field: int = 1) -> bytes:
    """Repeated KeyValue at `field`: bools, ints and floats keep their type, the rest are
    strings."""
    known = _PAIRS[field]
    out = []
    for key, value in attributes.items():
        kind = type(value)
        if kind is str or kind is int:  # the values worth keeping (True == 1: not bools)
            values = known.get(key)
            if values is None:
                values = _remember(known, key, {})
            encoded = values.get(value)
            if encoded is None:
                encoded = _field(field, _key_value(key, value))
                if len(values) < _MAX_VALUES_PER_KEY:  # a key of many values (ids) stops here
                    values[value] = encoded
        else:
            encoded = _field(field, _key_value(key, value))
        out.append(encoded)
    return b"".join(out)


def _key_value(key: str, value: Any) -> bytes:
    return _field(1, str(key).encode()) + _field(2, _any_value(value))


def _any_value(value: Any) -> bytes:
    if isinstance(value, str):
        return _field(1, value.encode())
    if isinstance(value, bool):
        return _BOOL_VALUES[value]
    if isinstance(value, int):
        return _INT_VALUE + _varint(value & _UINT64)
    if isinstance(value, float):
        return _DOUBLE_VALUE + _FIXED64_DOUBLE.pack(value)
    if isinstance(value, (tuple, list)):  # the SDK's sequence attributes: an ArrayValue
        return _field(5, b"".join(_field(1, _any_value(item)) for item in value))
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


def _remember(cache: dict, key: Any, value: Any) -> Any:
    """Keep what was encoded, up to a bound: names and keys come from forge-node's own few."""
    if len(cache) < _MAX_KEYS:
        cache[key] = value
    return value


# Tags, fixed fields, span names and attribute pairs, encoded once: most of a span is these.
_NAMES: dict[str, bytes] = {}
_PAIRS: list[dict[str, dict[Any, bytes]]] = [{} for _ in range(16)]  # by field
_MAX_KEYS = 1024
_MAX_VALUES_PER_KEY = 64
_LENGTH_DELIMITED = [_tag(number, _BYTES) for number in range(16)]
_FIXED64_DOUBLE = struct.Struct("<d")
# One-byte tags are packed with their field: (number << 3 | wire type) and, for bytes, a
# one-byte length
_IDS = struct.Struct(">BBQQBBQ")  # trace_id (field 1: 16 bytes, big-endian), span_id (2: 8)
_IDS_TAGS = (_tag(1, _BYTES)[0], 16), (_tag(2, _BYTES)[0], 8)
_PARENT_SPAN_ID = struct.Struct(">BBQ")  # field 4: 8 bytes
_PARENT_TAG = (_tag(4, _BYTES)[0], 8)
_TIMES = struct.Struct("<BQBQ")  # start (field 7) and end (field 8): fixed64
_TIMES_TAGS = (_tag(7, _FIXED64)[0], _tag(8, _FIXED64)[0])
_EVENT_TIME = struct.Struct("<BQ")  # field 1: fixed64
_EVENT_TIME_TAG = _tag(1, _FIXED64)[0]
_FLAGS = _tag(16, _FIXED32)  # two bytes, then the fixed32
_LINK_FLAGS = _tag(6, _FIXED32)
_UINT32 = struct.Struct("<I")
_KIND_FIELDS = {kind._value_: _tag(6, _VARINT) + _varint(number) for kind, number in _KINDS.items()}
_SPAN_TAG = _tag(2, _BYTES)[0]
_STATUS_CODES = {code: _tag(3, _VARINT) + _varint(number) if number else b""
                 for code, number in _STATUS.items()}
_BOOL_VALUES = {value: _tag(2, _VARINT) + _varint(int(value)) for value in (False, True)}
_INT_VALUE, _DOUBLE_VALUE = _tag(3, _VARINT), _tag(4, _FIXED64)
