"""The cost of one span, in microseconds of CPU, in process: forge-node's own span, an app's
span (the OpenTelemetry API through the TracerProvider forge-node registers, into
forge-node's shipper), a `db.query` span ([observability] db_spans), and the SDK's own span
as an app would set it up (BatchSpanProcessor and the OTLP/HTTP exporter's encoder).

    python bench/spans.py [--spans 20000] [--rounds 7]

Each span is measured twice: where the request or job pays for it (start, attributes, end,
queueing: "in the request") and where the export thread does (encoding to OTLP protobuf).
Nothing is sent: the shipper's thread sleeps through the measurement and the queue holds
every span. Each figure is the best of `--rounds` runs of `--spans` spans, the least
disturbed by the machine's neighbours.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind

from forge_node.observability import dbspans, otlp_wire
from forge_node.observability.spans import (
    OtlpHttpSender,
    RatioSampler,
    ShipperProcessor,
    SpanFactory,
    SpanShipper,
)

RESOURCE = Resource.create({"service.name": "bench", "service.instance.id": "node-1"})
QUERY = "SELECT id, body FROM notes WHERE owner = %s AND state = 'open' LIMIT 50"


class Rows:
    """What dbspans reads of a cursor after a statement: it returned 12 rows."""

    description = ("id", "body")
    rowcount = 12


class Kept(SpanExporter):
    """The SDK's pipeline, minus the network: BatchSpanProcessor hands it nothing while the
    measurement runs (its delay is longer)."""

    def export(self, spans: list[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class Collect(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def best_us(run: Callable[[int], None], count: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        run(count)
        best = min(best, time.process_time() - started)
    return best / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    count, rounds = args.spans, args.rounds
    room = str(count * rounds * 4)  # every span stays queued, none is exported
    environ = {"OTEL_BSP_SCHEDULE_DELAY": "3600000", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": room,
               "OTEL_BSP_MAX_QUEUE_SIZE": room}
    os.environ.update(environ)  # the SDK's BatchSpanProcessor reads the same settings
    shipper = SpanShipper(OtlpHttpSender("http://127.0.0.1:9/v1/traces", 1.0, environ={}),
                          RESOURCE, "forge_node", "0", environ=environ)
    factory = SpanFactory(RatioSampler(1.0), shipper)
    forge_provider = TracerProvider(resource=RESOURCE, shutdown_on_exit=False,
                                    sampler=ParentBased(TraceIdRatioBased(1.0)))
    forge_provider.add_span_processor(ShipperProcessor(shipper))
    app_tracer = forge_provider.get_tracer("shop")
    sdk_provider = TracerProvider(resource=RESOURCE, shutdown_on_exit=False)
    sdk_provider.add_span_processor(BatchSpanProcessor(Kept()))
    sdk_tracer = sdk_provider.get_tracer("shop")

    request = factory.start("fn.execute", trace.INVALID_SPAN_CONTEXT, SpanKind.INTERNAL, None)
    otel_context.attach(trace.set_span_in_context(request))
    parent = request.get_span_context()

    def forge_spans(n: int) -> None:
        for _ in range(n):
            factory.start("fn.execute", parent, SpanKind.INTERNAL,
                          {"fn.name": "place_order", "fn.kind": "mutation"}).end()

    def app_spans(n: int) -> None:
        for _ in range(n):
            with app_tracer.start_as_current_span("charge-card") as span:
                span.set_attribute("order.sku", "A-1")

    def db_spans(n: int) -> None:
        rows = Rows()
        for _ in range(n):
            span = dbspans._start(factory, QUERY, rows)
            dbspans._finished(span, rows)

    def sdk_spans(n: int) -> None:
        for _ in range(n):
            with sdk_tracer.start_as_current_span("charge-card") as span:
                span.set_attribute("order.sku", "A-1")

    in_request = {name: best_us(run, count, rounds) for name, run in (
        ("forge-node span", forge_spans), ("app span (forge-node's provider)", app_spans),
        ("db.query span", db_spans), ("the SDK's own span", sdk_spans))}

    recorded = [s for s in shipper.queue if s.name == "fn.execute"][:count]
    queries = [s for s in shipper.queue if s.name == "db.query"][:count]
    app = [s for s in shipper.queue if s.name == "charge-card"][:count]
    collect = Collect()
    sdk_alone = TracerProvider(resource=RESOURCE, shutdown_on_exit=False)
    sdk_alone.add_span_processor(collect)
    for _ in range(count):
        with sdk_alone.get_tracer("shop").start_as_current_span("charge-card") as span:
            span.set_attribute("order.sku", "A-1")
    encoding = {
        "forge-node span": best_us(lambda n: [otlp_wire.span(s) for s in recorded[:n]],
                                   count, rounds),
        "app span (forge-node's provider)": best_us(
            lambda n: [otlp_wire.sdk_span(s) for s in app[:n]], count, rounds),
        "db.query span": best_us(lambda n: [otlp_wire.span(s) for s in queries[:n]],
                                 count, rounds),
        "the SDK's own span": best_us(
            lambda n: encode_spans(collect.spans[:n]).SerializeToString(), count, rounds),
    }
    print(f"{'span':<34} {'in the request':>15} {'export thread':>14} {'total':>8}  (us)")
    for name, cost in in_request.items():
        print(f"{name:<34} {cost:>15.1f} {encoding[name]:>14.1f} {cost + encoding[name]:>8.1f}")
    sdk_provider.shutdown()
    shipper.shutdown(timeout_secs=0.1)


if __name__ == "__main__":
    main()
