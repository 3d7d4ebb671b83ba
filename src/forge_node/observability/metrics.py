"""The metrics every role records, created in one place so names and labels stay one set.

Counters are plain in-process tallies that the SDK reads at each collection (observable
counters): a request adds one under a lock instead of going through the SDK's aggregation,
which costs tens of microseconds per measurement. Histograms go through the SDK. With
metrics not exported, recording does nothing at all.

Labels are bounded: HTTP paths are route templates (unmatched paths collapse to one value),
unknown function names never get this far (a 404), job types come from the app's registry.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

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
        return [Observation(n, dict(zip(self.labels, values, strict=True)))
                for values, n in counts]


class Metrics:
    def __init__(self, meter: metrics.Meter, enabled: bool) -> None:
        self.enabled = enabled
        self.http_requests = self._counter(meter, "http_requests_total",
                                           ("method", "path", "status"),
                                           "HTTP requests answered by the gateway")
        self.fn_executions = self._counter(meter, "fn.executions_total",
                                           ("function", "kind", "outcome"),
                                           "Queries and mutations run, by outcome")
        self.job_executions = self._counter(meter, "job_executions_total",
                                            ("job_type", "status"),
                                            "Job attempts run, by their outcome")
        self.http_duration = meter.create_histogram(
            "http_request_duration_seconds", unit="s",
            description="Time to answer an HTTP request")
        self.job_duration = meter.create_histogram(
            "job_duration_seconds", unit="s", description="Time a job attempt ran")

    @staticmethod
    def _counter(meter: metrics.Meter, name: str, labels: tuple[str, ...],
                 description: str) -> Tally:
        tally = Tally(labels)
        callback: Callable = tally.observe
        meter.create_observable_counter(name, [callback], description=description)
        return tally

    def http_request(self, method: str, path: str, status: int, seconds: float) -> None:
        if self.enabled:
            self.http_requests.add(method, path, status)
            self.http_duration.record(seconds, {"method": method, "path": path,
                                                "status": status})

    def function_run(self, function: str, kind: str, outcome: str) -> None:
        if self.enabled:
            self.fn_executions.add(function, kind, outcome)

    def job_run(self, job_type: str, status: str, seconds: float) -> None:
        if self.enabled:
            self.job_executions.add(job_type, status)
            self.job_duration.record(seconds, {"job_type": job_type, "status": status})
