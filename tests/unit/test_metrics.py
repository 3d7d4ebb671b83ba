"""Histogram tallies: OpenTelemetry's explicit-bucket rules, exported beside the SDK's metrics."""

from __future__ import annotations

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)

from forge_node.observability.metrics import HistogramExporter, HistogramTally, Metrics


class Captured(MetricExporter):
    def __init__(self) -> None:
        super().__init__()
        self.exports: list[MetricsData] = []

    def export(self, metrics_data, timeout_millis=10_000, **kwargs):
        self.exports.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis=10_000):
        return True

    def shutdown(self, timeout_millis=30_000, **kwargs):
        pass


def test_a_value_on_a_bound_counts_in_that_bound_s_bucket():
    tally = HistogramTally("d_seconds", "s", "", ("route",), bounds=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        tally.record(value, "/a")
    tally.record(0.2, "/b")
    points = {p.attributes["route"]: p for p in tally.metric(1, 2).data.data_points}
    a = points["/a"]
    assert (a.bucket_counts, a.count, a.min, a.max) == ([2, 2, 1], 5, 0.05, 7.0)
    assert abs(a.sum - 8.65) < 1e-9
    assert points["/b"].bucket_counts == [0, 1, 0]
    assert a.explicit_bounds == [0.1, 1.0]


def test_nothing_recorded_is_no_metric():
    assert HistogramTally("d_seconds", "s", "", ("route",)).metric(1, 2) is None


def test_histograms_join_the_counters_in_forge_node_s_scope_at_each_export():
    captured = Captured()
    exporter = HistogramExporter(captured, "forge_node")
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(metric_readers=[reader])
    metrics = Metrics(provider.get_meter("forge_node"), enabled=True)
    exporter.histograms = metrics.histograms
    try:
        metrics.http_request("POST", "/_api/rpc/{name}", 200, 0.003)
        metrics.http_request("POST", "/_api/rpc/{name}", 200, 0.004)
        reader.collect()
    finally:
        provider.shutdown()
    [resource_metrics] = captured.exports[0].resource_metrics
    [scope] = resource_metrics.scope_metrics
    assert scope.scope.name == "forge_node"
    by_name = {m.name: m for m in scope.metrics}
    assert set(by_name) == {"http_requests_total", "http_request_duration_seconds"}
    [point] = by_name["http_request_duration_seconds"].data.data_points
    assert dict(point.attributes) == {"method": "POST", "path": "/_api/rpc/{name}",
                                      "status": 200}
    assert point.count == 2
    assert point.bucket_counts[2] == 2  # (0.0025, 0.005]
