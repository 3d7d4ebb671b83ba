"""OpenTelemetry for one process, built after it is forked and shut down before it exits.

A provider built before a fork would keep the parent's pid and its export threads, so each
role process (and each gunicorn worker) calls `Telemetry.start` itself. Every request and job
gets real trace and span ids for its headers and log lines, and an inbound `traceparent`
joins its trace either way.

Export is OTLP over HTTP/protobuf to `<otlp_endpoint>/v1/traces`, `/v1/metrics`,
`/v1/logs` from background threads: a collector that is down never blocks a request or a
job, and its errors are logged at most once a minute (see logs.py). Without an
`otlp_endpoint` the exporters read the standard OTEL_EXPORTER_OTLP_* variables; the other
standard OTEL_* variables (batch delays, headers, timeouts, resource attributes) keep
working where forge.toml says nothing.

With traces exported, each process also registers the SDK's TracerProvider as the global
one, so the spans the app's code and its instrumentation packages start through the
OpenTelemetry API are children of the current forge-node span (the request's, the
function's, the job's), follow its sampling decision (the same ParentBased(TraceIdRatioBased)
rule), carry the node's resource, and are exported with forge-node's own spans in the same
batches (spans.ShipperProcessor). The SDK's span limits (OTEL_SPAN_*, OTEL_ATTRIBUTE_*) apply
to them, and span processors the app adds to the provider see them. A provider the app set
itself before the fork is kept. Without traces the API stays the no-op default.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from opentelemetry import metrics as metrics_api
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from .. import __version__, db
from ..config import ObservabilityConfig
from . import dbspans, logs
from .metrics import HistogramExporter, Metrics
from .spans import (
    OtlpHttpSender,
    RatioSampler,
    ShipperProcessor,
    SpanFactory,
    SpanShipper,
    unrecorded_span,
)

__all__ = ["Telemetry", "unrecorded_span"]

log = logging.getLogger(__name__)

SCOPE = "forge_node"
EXPORT_TIMEOUT_SECS = 5.0


@dataclass
class Telemetry:
    spans: SpanFactory
    metrics: Metrics
    meter: metrics_api.Meter
    _shutdowns: tuple
    exports_logs: bool = False
    db_spans: bool = False  # functions' and jobs' statements get db.query spans (dbspans.py)

    @classmethod
    def start(cls, config: ObservabilityConfig, service: str, role: str,
              node_id: str) -> Telemetry:
        resource = Resource.create({
            "service.name": service, "service.version": __version__,
            "service.instance.id": node_id, "forge.role": role, "process.pid": os.getpid()})
        shipper = _span_shipper(config, resource)
        tracer_provider = _tracer_provider(config, resource, shipper)
        meter_provider, histogram_exporter = _meter_provider(config, resource)
        logger_provider = _logger_provider(config, resource)
        meter = (meter_provider or metrics_api.NoOpMeterProvider()).get_meter(SCOPE, __version__)
        metrics = Metrics(meter, meter_provider is not None)
        if meter_provider is not None:
            histogram_exporter.histograms = metrics.histograms
        sampler = RatioSampler(config.sampling_ratio) if shipper else None
        # the provider first: processors the app added flush before the shipper stops
        shutdowns = tuple(p.shutdown for p in (tracer_provider, shipper, meter_provider,
                                               logger_provider) if p)
        return cls(SpanFactory(sampler, shipper), metrics, meter, shutdowns,
                   logger_provider is not None, config.db_spans and shipper is not None)

    @property
    def tracing(self) -> bool:
        return self.spans.shipper is not None

    def cursor_classes(self) -> tuple[type[db.CountingCursor], type[db.AsyncCountingCursor]]:
        """The cursors for functions' and jobs' connections (sync, async): recording db.query
        spans when db_spans is on, otherwise plain counting ones."""
        if self.db_spans:
            return dbspans.cursor_classes(self.spans)
        return db.CountingCursor, db.AsyncCountingCursor

    @property
    def needs_span_context(self) -> bool:
        """Whether a request's span must be OpenTelemetry's current one: for exported traces,
        and for exported logs, whose records take their trace ids from it. Otherwise the
        request's ids in `logs.REQUEST` serve the console lines and the jobs it enqueues."""
        return self.tracing or self.exports_logs

    def start_span(self, name: str, *, parent: Context | None = None,
                   kind: trace.SpanKind = trace.SpanKind.INTERNAL,
                   attributes: dict | None = None) -> trace.Span:
        """A recorded span when sampled and traces are exported; otherwise only its ids (in
        the parent's trace), which is all headers and log lines need."""
        parent_span = trace.get_current_span(parent).get_span_context()
        return self.spans.start(name, parent_span, kind, attributes)

    def shutdown(self) -> None:
        """Flush what is buffered (bounded by the exporters' timeouts) and stop the threads."""
        for shutdown in self._shutdowns:
            try:
                shutdown()
            except Exception:  # a collector that is down must not fail a clean stop
                log.debug("telemetry shutdown failed", exc_info=True)
        logs.detach_otlp_handler()


def _endpoint(config: ObservabilityConfig, signal: str) -> str | None:
    if not config.otlp_endpoint:
        return None  # the exporter reads OTEL_EXPORTER_OTLP_(<SIGNAL>_)ENDPOINT
    return f"{config.otlp_endpoint.rstrip('/')}/v1/{signal}"


def _span_shipper(config: ObservabilityConfig, resource: Resource) -> SpanShipper | None:
    if not config.exports("traces"):
        return None
    sender = OtlpHttpSender(_endpoint(config, "traces"), EXPORT_TIMEOUT_SECS)
    return SpanShipper(sender, resource, SCOPE, __version__)


def _tracer_provider(config: ObservabilityConfig, resource: Resource,
                     shipper: SpanShipper | None) -> TracerProvider | None:
    """The process's global TracerProvider, feeding forge-node's shipper; None without traces,
    or when the app set a provider of its own before the fork (the API allows one)."""
    if shipper is None:
        return None
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        log.info("the app set its own TracerProvider: its spans go where it sends them, "
                 "in forge-node's traces", extra={"event": "telemetry.app_tracer_provider"})
        return None
    provider = TracerProvider(
        resource=resource, shutdown_on_exit=False,  # Telemetry.shutdown flushes it
        sampler=ParentBased(TraceIdRatioBased(config.sampling_ratio)))
    provider.add_span_processor(ShipperProcessor(shipper))
    trace.set_tracer_provider(provider)
    return provider


def _meter_provider(config: ObservabilityConfig, resource: Resource,
                    ) -> tuple[MeterProvider | None, HistogramExporter | None]:
    if not config.exports("metrics"):
        return None, None
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    exporter = HistogramExporter(OTLPMetricExporter(endpoint=_endpoint(config, "metrics"),
                                                    timeout=EXPORT_TIMEOUT_SECS), SCOPE)
    reader = PeriodicExportingMetricReader(
        exporter, export_interval_millis=config.metrics_interval_secs * 1000,
        export_timeout_millis=EXPORT_TIMEOUT_SECS * 1000)
    return MeterProvider(resource=resource, metric_readers=[reader]), exporter


def _logger_provider(config: ObservabilityConfig, resource: Resource):
    if not config.exports("logs"):
        return None
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    provider = LoggerProvider(resource=resource)
    exporter = OTLPLogExporter(endpoint=_endpoint(config, "logs"), timeout=EXPORT_TIMEOUT_SECS)
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    logs.attach_otlp_handler(provider, config.log_level)
    return provider
