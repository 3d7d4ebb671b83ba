"""forge-node's own spans: the OpenTelemetry API's Span, recorded and exported over
OTLP/HTTP for a fraction of the SDK's cost.

Measured on the reference machine (bench/gateway.py --peer observability), the SDK's
general-purpose span (samplers, limits, locks, attribute validation on every call) and its
generic OTLP encoding cost about 150 microseconds per span, two spans per request: more
than the whole of a trivial query. forge-node records only its own few spans, whose
attributes it controls, so a `RecordedSpan` keeps plain fields, its sampling decision is the
SDK's ParentBased(TraceIdRatioBased) rule computed inline, and ended spans are written in
OTLP's protobuf wire format (otlp_wire.py) and POSTed in batches by one background thread,
honouring the standard OTEL_EXPORTER_OTLP_* and OTEL_BSP_* variables. The queue is bounded:
when the collector cannot keep up, spans are dropped, never a request slowed.
Unsampled spans are NonRecordingSpans: ids for headers and log lines, nothing recorded.
Metrics and logs use the SDK and its exporters (otel.py).

The spans that the app's code and instrumentation packages start through the OpenTelemetry
API are the SDK's (otel.py registers its TracerProvider): `ShipperProcessor` hands them to
the same shipper, so they share forge-node's queue, export thread, connection, settings and
batches, and forge-node's own spans keep their fast path.
"""

from __future__ import annotations

import collections
import gzip
import http.client
import logging
import os
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.re import parse_env_headers

from . import otlp_wire

log = logging.getLogger(__name__)

_ids = RandomIdGenerator()
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_TRACE_ID_LIMIT = (1 << 64) - 1


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
        self.attributes = dict(attributes) if attributes else {}
        self.events: list[tuple[str, Mapping[str, Any] | None, int]] = []
        self.status = otlp_wire.UNSET
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
        self.events.append((name, attributes, timestamp or time.time_ns()))

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
    """Ended spans, encoded and exported in batches from one background thread.

    Honours OTEL_BSP_SCHEDULE_DELAY (ms), OTEL_BSP_MAX_EXPORT_BATCH_SIZE and
    OTEL_BSP_MAX_QUEUE_SIZE with the SDK's defaults; failures are logged at most once a
    minute and their batch dropped (a collector that is down costs nothing else).
    """

    def __init__(self, sender: OtlpHttpSender, resource: Resource, scope_name: str,
                 scope_version: str, environ: Mapping[str, str] = os.environ) -> None:
        self.sender = sender
        self.resource = otlp_wire.resource(resource.attributes)
        self.scope = otlp_wire.scope(scope_name, scope_version)
        self.delay_secs = positive_setting(environ, "OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        self.batch = positive_setting(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)
        self.scopes: dict[Any, bytes] = {}  # the SDK's instrumentation scopes, encoded
        self.queue: collections.deque[RecordedSpan | ReadableSpan] = collections.deque(
            maxlen=positive_setting(environ, "OTEL_BSP_MAX_QUEUE_SIZE", 2048))
        self.dropped = 0
        self._wake = threading.Event()
        self._flushing = False
        self._flushed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="forge-span-export", daemon=True)
        self._thread.start()

    def add(self, span: RecordedSpan | ReadableSpan) -> None:
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1  # the deque drops the oldest: the collector cannot keep up
        self.queue.append(span)
        if len(self.queue) >= self.batch:
            self._wake.set()

    def flush(self, timeout_secs: float) -> bool:
        """Export everything queued now; whether that finished within the timeout."""
        with self._flushed:
            self._flushing = True
            self._wake.set()
            return self._flushed.wait_for(lambda: not self._flushing, timeout_secs)

    def shutdown(self, timeout_secs: float = 5.0) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout_secs)
        self.sender.close()

    def _run(self) -> None:
        """Export full batches as soon as they fill, and whatever is queued every delay."""
        due = time.monotonic() + self.delay_secs
        while not self._stopping:
            self._wake.wait(max(0.0, due - time.monotonic()))
            self._wake.clear()
            flushing = self._flushing
            everything = flushing or time.monotonic() >= due
            self._export(everything)
            if everything:
                due = time.monotonic() + self.delay_secs
            if flushing:
                with self._flushed:
                    self._flushing = False
                    self._flushed.notify_all()
        self._export(everything=True)

    def _export(self, everything: bool) -> None:
        while len(self.queue) >= (1 if everything else self.batch):
            by_scope: dict[bytes, list[bytes]] = {self.scope: []}
            count = 0
            while self.queue and count < self.batch:
                span = self.queue.popleft()
                if type(span) is RecordedSpan:
                    by_scope[self.scope].append(otlp_wire.span(span))
                else:
                    by_scope.setdefault(self._scope_of(span), []).append(
                        otlp_wire.sdk_span(span))
                count += 1
            self.sender.send(otlp_wire.export_request(
                self.resource, [(scope, spans) for scope, spans in by_scope.items() if spans]),
                count)
        if self.dropped:
            self.sender.complain(f"dropped {self.dropped} spans: the collector does not keep up")
            self.dropped = 0

    def _scope_of(self, span: ReadableSpan) -> bytes:
        scope = span.instrumentation_scope
        encoded = self.scopes.get(scope)
        if encoded is None:
            encoded = otlp_wire.scope(scope.name, scope.version or "") if scope else b""
            if len(self.scopes) < 1024:  # scopes are the app's few tracers' names
                self.scopes[scope] = encoded
        return encoded


class ShipperProcessor(SpanProcessor):
    """Hands the SDK's ended, sampled spans to forge-node's shipper (see the module's
    docstring). A span processor the app adds to the provider gets them as well."""

    def __init__(self, shipper: SpanShipper) -> None:
        self.shipper = shipper

    def on_end(self, span: ReadableSpan) -> None:
        if span.context.trace_flags.sampled:
            self.shipper.add(span)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.shipper.flush(timeout_millis / 1000)


def positive_setting(environ: Mapping[str, str], name: str, default: int) -> int:
    """An OTEL_BSP_* delay or size. One that is not a positive integer is logged and the
    default used, as the SDK would refuse it: a zero delay would spin the export thread,
    and a zero batch would never empty the queue."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value > 0:
        return value
    log.warning("%s=%r is not a positive integer; using %d", name, raw, default,
                extra={"event": "telemetry.bad_setting"})
    return default


class OtlpHttpSender:
    """POSTs encoded batches to the collector's /v1/traces over one kept-alive connection.

    http.client directly: a 100 kB POST through requests costs about 1.8 ms of CPU here, and
    0.3 ms this way. It reads the same OTEL_EXPORTER_OTLP_(TRACES_)* variables as the SDK's
    exporter (endpoint, headers, compression, certificate, client certificate and key); it
    does not go through an HTTP(S)_PROXY.
    """

    def __init__(self, endpoint: str | None, timeout_secs: float,
                 environ: Mapping[str, str] = os.environ) -> None:
        def setting(name: str, default: str = "") -> str:
            return (environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}")
                    or environ.get(f"OTEL_EXPORTER_OTLP_{name}", default))

        base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318")
        self.endpoint = endpoint or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or \
            f"{base.rstrip('/')}/v1/traces"
        self.url = urllib.parse.urlsplit(self.endpoint)
        self.target = (self.url.path or "/") + (f"?{self.url.query}" if self.url.query else "")
        self.timeout_secs = timeout_secs
        self.gzip = setting("COMPRESSION").strip() == "gzip"
        self.headers = {**parse_env_headers(setting("HEADERS"), liberal=True),
                        "Content-Type": "application/x-protobuf"}
        if self.gzip:
            self.headers["Content-Encoding"] = "gzip"
        self.certificate = setting("CERTIFICATE") or None
        self.client_certificate = setting("CLIENT_CERTIFICATE") or None
        self.client_key = setting("CLIENT_KEY") or None
        self._tls: ssl.SSLContext | None = None
        self._connection: http.client.HTTPConnection | None = None
        self._complained_at = float("-inf")

    def send(self, body: bytes, count: int) -> bool:
        if self.gzip:
            body = gzip.compress(body)
        try:
            status = self._post(body)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.complain(f"could not export {count} spans to {self.endpoint}: {exc}")
            return False
        if not 200 <= status < 300:
            self.complain(f"the collector at {self.endpoint} refused {count} spans: "
                          f"HTTP {status}")
        return 200 <= status < 300

    def _post(self, body: bytes) -> int:
        reused = self._connection is not None
        try:
            return self._request(body)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
        return self._request(body)  # the collector closed the kept-alive connection meanwhile

    def _request(self, body: bytes) -> int:
        """The response's status."""
        connection = self._connection or self._connect()
        try:
            connection.request("POST", self.target, body=body, headers=self.headers)
            response = connection.getresponse()
            response.read()
        except BaseException:
            self.close()
            raise
        if response.will_close:
            self.close()
        return response.status

    def _connect(self) -> http.client.HTTPConnection:
        """A new connection; a bad URL or certificate fails the send, never the process."""
        if self.url.scheme == "http" and self.url.hostname:
            self._connection = http.client.HTTPConnection(self.url.hostname, self.url.port,
                                                          timeout=self.timeout_secs)
        elif self.url.scheme == "https" and self.url.hostname:
            if self._tls is None:
                tls = ssl.create_default_context(cafile=self.certificate)
                if self.client_certificate:
                    tls.load_cert_chain(self.client_certificate, self.client_key)
                self._tls = tls
            self._connection = http.client.HTTPSConnection(
                self.url.hostname, self.url.port, timeout=self.timeout_secs, context=self._tls)
        else:
            raise ValueError(f"not an http(s) URL: {self.endpoint!r}")
        return self._connection

    def complain(self, message: str) -> None:
        """At most once a minute: a collector that is down must not flood the log."""
        if time.monotonic() - self._complained_at >= 60:
            self._complained_at = time.monotonic()
            log.warning(message, extra={"event": "telemetry.export_failed"})

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


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
