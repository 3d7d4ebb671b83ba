"""The metrics every role records, created in one place so names and labels stay one set.

Labels are bounded: HTTP paths are route templates (unmatched paths collapse to one value),
unknown function names collapse to "_unknown", job types come from the app's own registry.
"""

from __future__ import annotations

from opentelemetry import metrics

# seconds: from a millisecond request to an hour-long job
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
UNKNOWN = "_unknown"


class Metrics:
    def __init__(self, meter: metrics.Meter) -> None:
        self.http_requests = meter.create_counter(
            "http_requests_total", description="HTTP requests answered by the gateway")
        self.http_duration = meter.create_histogram(
            "http_request_duration_seconds", unit="s",
            description="Time to answer an HTTP request")
        self.fn_executions = meter.create_counter(
            "fn.executions_total", description="Queries and mutations run, by outcome")
        self.job_executions = meter.create_counter(
            "job_executions_total", description="Job attempts run, by their outcome")
        self.job_duration = meter.create_histogram(
            "job_duration_seconds", unit="s", description="Time a job attempt ran")

    def http_request(self, method: str, path: str, status: int, seconds: float) -> None:
        labels = {"method": method, "path": path, "status": status}
        self.http_requests.add(1, labels)
        self.http_duration.record(seconds, labels)

    def function_run(self, function: str, kind: str, outcome: str) -> None:
        self.fn_executions.add(1, {"function": function, "kind": kind, "outcome": outcome})

    def job_run(self, job_type: str, status: str, seconds: float) -> None:
        labels = {"job_type": job_type, "status": status}
        self.job_executions.add(1, labels)
        self.job_duration.record(seconds, labels)
