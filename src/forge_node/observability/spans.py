"""forge-node's own spans: the OpenTelemetry API's Span, recorded for a fraction of the SDK's
cost, and exported in batches through the SDK's OTLP/HTTP exporter.

The SDK's general-purpose span (samplers, limits, locks, attribute validation on every
call) costs tens of microseconds to create and end, twice per request, and its batch export
hashes the resource once per span. forge-node records only its own few spans, whose
attributes it controls, so a `RecordedSpan` keeps plain fields; its sampling decision is
the SDK's ParentBased(TraceIdRatioBased) rule, computed inline. Ended spans queue in
memory (bounded: when the collector cannot keep up, new spans are dropped, never a request
slowed) and a background thread turns them into the SDK's ReadableSpan in batches for
`OTLPSpanExporter`. Unsampled spans are NonRecordingSpans: ids for headers and log lines,
nothing recorded.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

log = logging.getLogger(__name__)

_ids = RandomIdGenerator()
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_TRACE_ID_LIMIT = (1 << 64) - 1


class FrozenResource(Resource):
    """A Resource whose hash is computed once: the exporter groups spans by resource, and the
    SDK's Resource serialises its attributes to JSON for every hash."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or super().__eq__(other)


class RatioSampler:
    """ParentBased(TraceIdRatioBased(ratio)): follow a valid parent's sampled flag; otherwise
    keep the traces whose trace id falls under the ratio."""

    def __init__(self, ratio: float) -> None:
        self.bound = round(ratio * (_TRACE_ID_LIMIT + 1))

    def sampled(self, parent: SpanContext, trace_id: int) -> bool:
        if parent.is_valid:
            return parent.trace_flags.sampled
        return trace_id & _TRACE_ID_LIMIT < self.bound


def unrecorded_span(parent: SpanContext, trace_id: int | None = None,
                    trace_flags: TraceFlags | None = None) -> trace.Span:
    """New span ids in the parent's trace (or a new trace), with nothing recorded; the flags
    are the parent's unless given."""
    if trace_id is None:
        trace_id = parent.trace_id if parent.is_valid else _ids.generate_trace_id()
    if trace_flags is None:
        trace_flags = parent.trace_flags if parent.is_valid else TraceFlags(0)
    return trace.NonRecordingSpan(SpanContext(trace_id=trace_id,
                                              span_id=_ids.generate_span_id(),
                                              is_remote=False, trace_flags=trace_flags))


class RecordedSpan(trace.Span):
    """A sampled span of forge-node's own, handed to the shipper when it ends."""

    def __init__(self, name: str, context: SpanContext, parent: SpanContext | None,
                 kind: SpanKind, attributes: Mapping[str, Any] | None,
                 shipper: SpanShipper) -> None:
        self.name = name
        self.context = context
        self.parent = parent
        self.kind = kind
        self.attributes = dict(attributes or {})
        self.events: list[Event] = []
        self.status = Status(StatusCode.UNSET)
        self.start_time = time.time_ns()
        self.end_time: int | None = None
        self._shipper = shipper

    def get_span_context(self) -> SpanContext:
        return self.context

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        self.attributes.update(attributes)

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None,
                  timestamp: int | None = None) -> None:
        self.events.append(Event(name, attributes, timestamp or time.time_ns()))

    def update_name(self, name: str) -> None:
        self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        self.status = status if isinstance(status, Status) else Status(status, description)

    def record_exception(self, exception: BaseException, attributes: Any = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        self.add_event("exception", {"exception.type": type(exception).__name__,
                                     "exception.message": str(exception),
                                     **(attributes or {})}, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is None:
            self.end_time = end_time or time.time_ns()
            self._shipper.add(self)


class SpanShipper:
    """Ended spans, exported in batches from one background thread.

    Honours the standard OTEL_BSP_SCHEDULE_DELAY (ms), OTEL_BSP_MAX_EXPORT_BATCH_SIZE and
    OTEL_BSP_MAX_QUEUE_SIZE, with the SDK's defaults.
    """

    def __init__(self, exporter: SpanExporter, resource: Resource, scope: InstrumentationScope,
                 environ: Mapping[str, str] = os.environ) -> None:
        self.exporter = exporter
        self.resource = FrozenResource(resource)
        self.scope = scope
        self.delay_secs = int(environ.get("OTEL_BSP_SCHEDULE_DELAY", 5000)) / 1000
        self.batch = int(environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512))
        self.queue: collections.deque[RecordedSpan] = collections.deque(
            maxlen=int(environ.get("OTEL_BSP_MAX_QUEUE_SIZE", 2048)))
        self.dropped = 0
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="forge-span-export", daemon=True)
        self._thread.start()

    def add(self, span: RecordedSpan) -> None:
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1  # the deque drops the oldest: the collector cannot keep up
        self.queue.append(span)
        if len(self.queue) >= self.batch:
            self._wake.set()

    def shutdown(self, timeout_secs: float = 5.0) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout_secs)
        self.exporter.shutdown()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.delay_secs)
            self._wake.clear()
            self._export_all()
        self._export_all()

    def _export_all(self) -> None:
        while self.queue:
            batch: list[ReadableSpan] = []
            while self.queue and len(batch) < self.batch:
                batch.append(self._readable(self.queue.popleft()))
            self._export(batch)
        if self.dropped:
            log.warning("dropped %d spans: the collector does not keep up", self.dropped,
                        extra={"event": "telemetry.spans_dropped"})
            self.dropped = 0

    def _export(self, batch: Sequence[ReadableSpan]) -> None:
        try:
            self.exporter.export(batch)
        except Exception:  # the exporter logs its own failures; never let one end the thread
            log.debug("span export failed", exc_info=True)

    def _readable(self, span: RecordedSpan) -> ReadableSpan:
        return ReadableSpan(name=span.name, context=span.context, parent=span.parent,
                            resource=self.resource, attributes=span.attributes,
                            events=span.events, kind=span.kind, status=span.status,
                            start_time=span.start_time, end_time=span.end_time,
                            instrumentation_scope=self.scope)


class SpanFactory:
    """Starts forge-node's spans: recorded when sampled and exported, ids only otherwise."""

    def __init__(self, sampler: RatioSampler | None, shipper: SpanShipper | None) -> None:
        self.sampler = sampler
        self.shipper = shipper

    def start(self, name: str, parent: SpanContext, kind: SpanKind,
              attributes: Mapping[str, Any] | None) -> trace.Span:
        if self.shipper is None or self.sampler is None:
            return unrecorded_span(parent)
        trace_id = parent.trace_id if parent.is_valid else _ids.generate_trace_id()
        if not self.sampler.sampled(parent, trace_id):
            return unrecorded_span(parent, trace_id, TraceFlags(0))
        context = SpanContext(trace_id=trace_id, span_id=_ids.generate_span_id(),
                              is_remote=False, trace_flags=_SAMPLED)
        return RecordedSpan(name, context, parent if parent.is_valid else None, kind,
                            attributes, self.shipper)
