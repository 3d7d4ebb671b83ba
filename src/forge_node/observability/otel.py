"""OpenTelemetry for one process, built after it is forked and shut down before it exits.

A provider built before a fork would keep the parent's pid and its export threads, so each
role process (and each gunicorn worker) calls `Telemetry.start` itself. Traces always go
through the SDK, also when nothing is exported (then sampled off): every request and job
gets real trace and span ids for its headers and log lines, and an inbound `traceparent`
joins its trace either way.

Export is OTLP over HTTP/protobuf to `<otlp_endpoint>/v1/traces`, `/v1/metrics`,
`/v1/logs` from background threads: a collector that is down never blocks a request or a
job, and its errors are logged at most once a minute (see logs.py). Without an
`otlp_endpoint` the exporters read the standard OTEL_EXPORTER_OTLP_* variables; the other
standard OTEL_* variables (batch delays, headers, timeouts, resource attributes) keep
working where forge.toml says nothing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from opentelemetry import metrics as metrics_api
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased

from .. import __version__
from ..config import ObservabilityConfig
from . import logs
from .metrics import DURATION_BUCKETS, Metrics

SCOPE = "forge_node"
EXPORT_TIMEOUT_SECS = 5.0


@dataclass
class Telemetry:
    tracer: trace.Tracer
    metrics: Metrics
    meter: metrics_api.Meter
    _providers: tuple

    @classmethod
    def start(cls, config: ObservabilityConfig, service: str, role: str,
              node_id: str) -> Telemetry:
        resource = Resource.create({
            "service.name": service, "service.version": __version__,
            "service.instance.id": node_id, "forge.role": role, "process.pid": os.getpid()})
        tracer_provider = _tracer_provider(config, resource)
        meter_provider = _meter_provider(config, resource)
        logger_provider = _logger_provider(config, resource)
        meter = (meter_provider or metrics_api.NoOpMeterProvider()).get_meter(SCOPE, __version__)
        providers = tuple(p for p in (tracer_provider, meter_provider, logger_provider) if p)
        return cls(tracer_provider.get_tracer(SCOPE, __version__), Metrics(meter), meter,
                   providers)

    def shutdown(self) -> None:
        """Flush what is buffered (bounded by the exporters' timeouts) and stop the threads."""
        for provider in self._providers:
            try:
                provider.shutdown()
            except Exception:  # a collector that is down must not fail a clean stop
                logging.getLogger(__name__).debug("telemetry shutdown failed", exc_info=True)
        logs.detach_otlp_handler()


def _endpoint(config: ObservabilityConfig, signal: str) -> str | None:
    if not config.otlp_endpoint:
        return None  # the exporter reads OTEL_EXPORTER_OTLP_(<SIGNAL>_)ENDPOINT
    return f"{config.otlp_endpoint.rstrip('/')}/v1/{signal}"


def _tracer_provider(config: ObservabilityConfig, resource: Resource) -> TracerProvider:
    if not config.exports("traces"):
        return TracerProvider(resource=resource, sampler=ALWAYS_OFF)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=resource,
                              sampler=ParentBased(TraceIdRatioBased(config.sampling_ratio)))
    exporter = OTLPSpanExporter(endpoint=_endpoint(config, "traces"), timeout=EXPORT_TIMEOUT_SECS)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _meter_provider(config: ObservabilityConfig, resource: Resource) -> MeterProvider | None:
    if not config.exports("metrics"):
        return None
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    exporter = OTLPMetricExporter(endpoint=_endpoint(config, "metrics"),
                                  timeout=EXPORT_TIMEOUT_SECS)
    reader = PeriodicExportingMetricReader(
        exporter, export_interval_millis=config.metrics_interval_secs * 1000,
        export_timeout_millis=EXPORT_TIMEOUT_SECS * 1000)
    # the SDK's default buckets are for milliseconds; these durations are in seconds
    views = [View(instrument_name="*_seconds",
                  aggregation=ExplicitBucketHistogramAggregation(DURATION_BUCKETS))]
    return MeterProvider(resource=resource, metric_readers=[reader], views=views)


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
