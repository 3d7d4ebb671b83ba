"""The hand-written OTLP encoding parses, with opentelemetry-proto, to the spans it describes."""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from forge_node.observability import otlp_wire
from forge_node.observability.spans import RecordedSpan

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736


class Discard:
    def add(self, span: bytes) -> None:
        pass


def recorded(name, span_id, parent=None, kind=SpanKind.INTERNAL, attributes=None):
    context = SpanContext(TRACE_ID, span_id, is_remote=False, trace_flags=TraceFlags(1))
    return RecordedSpan(name, context, parent, kind, attributes, Discard())


def attributes(key_values):
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in key_values}


def parse(spans, resource=None):
    body = otlp_wire.export_request(otlp_wire.resource(resource or {}),
                                    [(otlp_wire.scope("forge_node", "1.2.3"),
                                      [otlp_wire.span(s) for s in spans])])
    return ExportTraceServiceRequest.FromString(body)


def test_a_server_span_with_every_kind_of_attribute():
    span = recorded("http.request", 0x00F067AA0BA902B7, kind=SpanKind.SERVER, attributes={
        "http.request.method": "POST", "http.response.status_code": 200, "big": 2**62,
        "negative": -5, "ratio": 0.25, "sampled": True, "off": False, "path": "/é/{name}"})
    span.end(span.start_time + 1_500_000)
    request = parse([span], resource={"service.name": "shop", "process.pid": 4242})
    [resource_spans] = request.resource_spans
    assert attributes(resource_spans.resource.attributes) == {"service.name": "shop",
                                                              "process.pid": 4242}
    [scope_spans] = resource_spans.scope_spans
    assert (scope_spans.scope.name, scope_spans.scope.version) == ("forge_node", "1.2.3")
    [out] = scope_spans.spans
    assert out.trace_id == TRACE_ID.to_bytes(16, "big")
    assert out.span_id.hex() == "00f067aa0ba902b7"
    assert out.parent_span_id == b""
    assert (out.name, out.kind, out.flags) == ("http.request", trace_pb2.Span.SPAN_KIND_SERVER, 1)
    assert (out.start_time_unix_nano, out.end_time_unix_nano) == \
        (span.start_time, span.start_time + 1_500_000)
    assert attributes(out.attributes) == {
        "http.request.method": "POST", "http.response.status_code": 200, "big": 2**62,
        "negative": -5, "ratio": 0.25, "sampled": True, "off": False, "path": "/é/{name}"}
    assert out.status.code == trace_pb2.Status.STATUS_CODE_UNSET


def test_a_child_span_with_an_error_status_and_an_event():
    parent = recorded("http.request", 1).get_span_context()
    span = recorded("job.execute", 2, parent=parent)
    span.set_status(Status(StatusCode.ERROR, "boom"))
    span.record_exception(ValueError("bad input"))
    span.end()
    second = recorded("fn.execute", 3, parent=parent)
    second.end()
    [first, other] = parse([span, second]).resource_spans[0].scope_spans[0].spans
    assert first.parent_span_id == (1).to_bytes(8, "big")
    assert (first.status.code, first.status.message) == (trace_pb2.Status.STATUS_CODE_ERROR,
                                                         "boom")
    [event] = first.events
    assert event.name == "exception"
    assert attributes(event.attributes) == {"exception.type": "ValueError",
                                            "exception.message": "bad input"}
    assert event.time_unix_nano > 0
    assert other.name == "fn.execute"
    assert other.kind == trace_pb2.Span.SPAN_KIND_INTERNAL


def test_values_kept_from_earlier_spans_never_leak_into_later_ones():
    """Pairs are encoded once and kept (up to a bound per key): ids past the bound, equal
    values of another type (1, True, 1.0) and the same value under another key stay apart."""
    spans = []
    for number in range(1, 201):
        span = recorded("http.request", number, attributes={
            "request.id": f"request-{number}", "http.route": f"/_api/rpc/{number % 3}",
            "flag": [1, True, 1.0][number % 3], "other": f"request-{number}"})
        span.end()
        spans.append(span)
    out = parse(spans).resource_spans[0].scope_spans[0].spans
    assert [attributes(span.attributes) for span in out] == [
        {"request.id": f"request-{number}", "http.route": f"/_api/rpc/{number % 3}",
         "flag": [1, True, 1.0][number % 3], "other": f"request-{number}"}
        for number in range(1, 201)]
    assert [type(attributes(span.attributes)["flag"]) for span in out[:3]] == [bool, float, int]


def test_an_sdk_span_with_what_only_the_sdk_has():
    """The app's spans come from the SDK: links, a trace state, array values, events and the
    counts its limits dropped parse back as the SDK recorded them."""
    ended = []

    class Keep(SpanProcessor):
        def on_end(self, span):
            ended.append(span)

    provider = TracerProvider(span_limits=SpanLimits(max_span_attributes=3),
                              shutdown_on_exit=False)
    provider.add_span_processor(Keep())
    tracer = provider.get_tracer("shop.payments", "2.0")
    parent = SpanContext(TRACE_ID, 0x00F067AA0BA902B7, is_remote=True,
                         trace_flags=TraceFlags(1), trace_state=TraceState([("vendor", "x")]))
    linked = SpanContext(TRACE_ID + 1, 0x1111, is_remote=True, trace_flags=TraceFlags(1))
    with tracer.start_as_current_span(
            "charge-card", context=set_span_in_context(NonRecordingSpan(parent)),
            links=[Link(linked, {"why": "retry"})]) as span:
        span.set_attributes({"dropped": 2, "tags": ("a", "b"), "amounts": [1, 2], "n": 1})
        span.add_event("authorised", {"code": "00"})
    [sdk] = ended
    body = otlp_wire.export_request(otlp_wire.resource({}), [
        (otlp_wire.scope("shop.payments", "2.0"), [otlp_wire.sdk_span(sdk)])])
    [scope_spans] = ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans
    assert (scope_spans.scope.name, scope_spans.scope.version) == ("shop.payments", "2.0")
    [out] = scope_spans.spans
    assert out.parent_span_id.hex() == "00f067aa0ba902b7"
    assert out.trace_state == "vendor=x"
    assert [[v.string_value for v in kv.value.array_value.values] for kv in out.attributes
            if kv.key == "tags"] == [["a", "b"]]
    assert out.dropped_attributes_count == 1
    [event] = out.events
    assert (event.name, attributes(event.attributes)) == ("authorised", {"code": "00"})
    [link] = out.links
    assert (int.from_bytes(link.trace_id, "big"), link.span_id.hex()) == \
        (TRACE_ID + 1, "0000000000001111")
    assert attributes(link.attributes) == {"why": "retry"}

