"""The metrics every role records, created in one place so names and labels stay one set.

Counters and histograms are plain in-process tallies, updated under a lock in a microsecond or
two: the SDK's aggregation costs 30 us per measurement here, a tenth of a whole request.
Counters reach the SDK as observable counters read at each collection; histograms, which
the SDK cannot observe, are added to each export by `HistogramExporter` (cumulative, like
the SDK's default). A request or a job attempt is recorded once, in its duration histogram,
whose counts are also its counter's. With metrics not exported, recording does nothing.

Labels are bounded: HTTP paths are route templates (unmatched paths collapse to one value),
unknown function names never get this far (a 404), job types come from the app's registry.
"""

from __future__ import annotations

import bisect
import collections
import threading
import time
from collections.abc import Iterable, Sequence

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from .. import __version__

# seconds: from a millisecond request to an hour-long job
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class Tally:
    """Counts per label values, read as an observable counter's cumulative observations."""

    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels = labels
        self._counts: collections.Counter[tuple] = collections.Counter()
        self._lock = threading.Lock()

    def add(self, *values: object) -> None:
        with self._lock:
            self._counts[values] += 1

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            counts = list(self._counts.items())
        return _observations(self.labels, counts)


def _observations(labels: tuple[str, ...], counts: Iterable[tuple[tuple, int]],
                  ) -> list[Observation]:
    return [Observation(n, dict(zip(labels, values, strict=True))) for values, n in counts]


class HistogramTally:
    """Bucket counts, count, sum, min and max per label values since the process started."""

    def __init__(self, name: str, unit: str, description: str, labels: tuple[str, ...],
                 bounds: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.name, self.unit, self.description = name, unit, description
        self.labels = labels
        self.bounds = bounds
        self._series: dict[tuple, _Series] = {}
        self._lock = threading.Lock()

    def record(self, value: float, *values: object) -> None:
        bucket = bisect.bisect_left(self.bounds, value)  # buckets include their upper bound
        with self._lock:
            series = self._series.get(values)
            if series is None:
                series = self._series[values] = _Series(len(self.bounds) + 1)
            series.add(bucket, value)

    def observe_counts(self, options: CallbackOptions) -> Iterable[Observation]:
        """Each series' count, for the counter that counts what the histogram measures."""
        with self._lock:
            counts = [(values, series.count) for values, series in self._series.items()]
        return _observations(self.labels, counts)

    def metric(self, start_ns: int, now_ns: int) -> Metric | None:
        with self._lock:
            points = [HistogramDataPoint(
                attributes=dict(zip(self.labels, values, strict=True)),
                start_time_unix_nano=start_ns, time_unix_nano=now_ns, count=series.count,
                sum=series.sum, bucket_counts=list(series.buckets),
                explicit_bounds=list(self.bounds), min=series.min, max=series.max)
                for values, series in self._series.items()]
        if not points:
            return None
        return Metric(self.name, self.description, self.unit,
                      Histogram(points, AggregationTemporality.CUMULATIVE))


class _Series:
    __slots__ = ("buckets", "count", "max", "min", "sum")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * size
        self.count = 0
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")

    def add(self, bucket: int, value: float) -> None:
        self.buckets[bucket] += 1
        self.count += 1
        self.sum += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)


class HistogramExporter(MetricExporter):
    """Wraps the OTLP exporter: each export also carries the histogram tallies, in the scope
    of forge-node's meter."""

    def __init__(self, exporter: MetricExporter, scope_name: str) -> None:
        super().__init__(preferred_temporality=exporter._preferred_temporality,
                         preferred_aggregation=exporter._preferred_aggregation)
        self.exporter = exporter
        self.scope_name = scope_name
        self.histograms: Sequence[HistogramTally] = ()
        self.start_ns = time.time_ns()

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: object) -> MetricExportResult:
        now_ns = time.time_ns()
        extra = [m for h in self.histograms if (m := h.metric(self.start_ns, now_ns))]
        if extra:
            metrics_data = MetricsData([self._with(resource_metrics, extra) for resource_metrics
                                        in metrics_data.resource_metrics])
        return self.exporter.export(metrics_data, timeout_millis=timeout_millis, **kwargs)

    def _with(self, resource_metrics: ResourceMetrics, extra: list[Metric]) -> ResourceMetrics:
        """The histograms join forge-node's scope, where its counters already are."""
        scopes = [scope for scope in resource_metrics.scope_metrics
                  if scope.scope.name != self.scope_name]
        ours = [scope for scope in resource_metrics.scope_metrics
                if scope.scope.name == self.scope_name]
        metrics_of_ours = [*(m for scope in ours for m in scope.metrics), *extra]
        scope = ours[0].scope if ours else InstrumentationScope(self.scope_name, __version__)
        scopes.append(ScopeMetrics(scope, metrics_of_ours, ours[0].schema_url if ours else ""))
        return ResourceMetrics(resource_metrics.resource, scopes, resource_metrics.schema_url)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.exporter.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: object) -> None:
        self.exporter.shutdown(timeout_millis=timeout_millis, **kwargs)


class Metrics:
    def __init__(self, meter: metrics.Meter, enabled: bool) -> None:
        self.enabled = enabled
        self.fn_executions = Tally(("function", "kind", "outcome"))
        meter.create_observable_counter("fn.executions_total", [self.fn_executions.observe],
                                        description="Queries and mutations run, by outcome")
        # a request or a job attempt is recorded once: its counter reads its histogram's counts
        self.http_duration = HistogramTally("http_request_duration_seconds", "s",
                                            "Time to answer an HTTP request",
                                            ("method", "path", "status"))
        meter.create_observable_counter("http_requests_total",
                                        [self.http_duration.observe_counts],
                                        description="HTTP requests answered by the gateway")
        self.job_duration = HistogramTally("job_duration_seconds", "s",
                                           "Time a job attempt ran", ("job_type", "status"))
        meter.create_observable_counter("job_executions_total",
                                        [self.job_duration.observe_counts],
                                        description="Job attempts run, by their outcome")
        self.histograms = (self.http_duration, self.job_duration)

    def http_request(self, method: str, path: str, status: int, seconds: float) -> None:
        if self.enabled:
            self.http_duration.record(seconds, method, path, status)

    def function_run(self, function: str, kind: str, outcome: str) -> None:
        if self.enabled:
            self.fn_executions.add(function, kind, outcome)

    def job_run(self, job_type: str, status: str, seconds: float) -> None:
        if self.enabled:
            self.job_duration.record(seconds, job_type, status)
