"""A small OTLP/HTTP collector for tests: it decodes the protobuf bodies forge-node sends to
/v1/traces, /v1/metrics and /v1/logs and keeps them as plain dicts."""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


def value_of(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return attributes_of(any_value.kvlist_value.values)
    if kind == "bytes_value":
        return any_value.bytes_value
    return getattr(any_value, kind) if kind else None


def attributes_of(pairs: Any) -> dict[str, Any]:
    return {pair.key: value_of(pair.value) for pair in pairs}


def items_of(resources: Any, scopes: str, items: str) -> Iterator[tuple[dict[str, Any], Any]]:
    """Every span, metric or log record of a request, with its resource's attributes."""
    for resource_items in resources:
        resource = attributes_of(resource_items.resource.attributes)
        for scope in getattr(resource_items, scopes):
            for item in getattr(scope, items):
                yield resource, item


class OtlpReceiver:
    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.points: list[dict] = []
        self.logs: list[dict] = []
        self.requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.receive(self.path, body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.lock = threading.Lock()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def receive(self, path: str, body: bytes) -> None:
        with self.lock:
            self.requests += 1
            if path == "/v1/traces":
                self._spans(ExportTraceServiceRequest.FromString(body))
            elif path == "/v1/metrics":
                self._metrics(ExportMetricsServiceRequest.FromString(body))
            elif path == "/v1/logs":
                self._logs(ExportLogsServiceRequest.FromString(body))

    def _spans(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self._span(attributes_of(resource_spans.resource.attributes),
                               scope_spans.scope.name, span)

    def _span(self, resource: dict[str, Any], scope: str, span: Any) -> None:
        self.spans.append({
            "name": span.name, "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
            "parent_span_id": span.parent_span_id.hex() or None,
            "attributes": attributes_of(span.attributes), "kind": span.kind,
            "status": span.status.code, "resource": resource, "scope": scope})

    def _metrics(self, request: ExportMetricsServiceRequest) -> None:
        for resource, metric in items_of(request.resource_metrics, "scope_metrics", "metrics"):
            kind = metric.WhichOneof("data")
            for point in getattr(metric, kind).data_points:
                entry = {"name": metric.name, "kind": kind, "resource": resource,
                         "attributes": attributes_of(point.attributes)}
                if kind == "histogram":
                    entry.update(count=point.count, sum=point.sum,
                                 bounds=list(point.explicit_bounds))
                else:
                    entry["value"] = getattr(point, point.WhichOneof("value"))
                self.points.append(entry)

    def _logs(self, request: ExportLogsServiceRequest) -> None:
        for resource, record in items_of(request.resource_logs, "scope_logs", "log_records"):
            self.logs.append({
                "body": value_of(record.body), "severity": record.severity_text,
                "trace_id": record.trace_id.hex() or None,
                "span_id": record.span_id.hex() or None,
                "attributes": attributes_of(record.attributes), "resource": resource})

    def wait_for(self, what: Callable[[OtlpReceiver], Any], timeout: float = 15,
                 message: str = "telemetry") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = what(self)
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{message} not received within {timeout}s; spans: "
                             f"{[s['name'] for s in self.spans]}, metrics: "
                             f"{sorted({p['name'] for p in self.points})}")

    def spans_named(self, name: str) -> list[dict]:
        return [span for span in self.spans if span["name"] == name]

    def points_named(self, name: str) -> list[dict]:
        return [point for point in self.points if point["name"] == name]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class BlackHole:
    """Accepts connections and never answers: the worst collector there is."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.running = False
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()
