"""The app's own telemetry joins forge-node's, with no setup in the app: spans it opens with
the OpenTelemetry API, an instrumentation package's spans, db.query spans of its statements
(db_spans), and its log lines, all in the trace of the request or job they belong to."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.acceptance.test_observability import FAST_EXPORT, call

MODULE = '''
import logging

import requests
from opentelemetry import trace
from opentelemetry.instrumentation.requests import RequestsInstrumentor

import forge_node as forge

RequestsInstrumentor().instrument()  # as an app adds an instrumentation package
tracer = trace.get_tracer("shop")
log = logging.getLogger("shop")


@forge.mutation(public=True)
def charge(ctx, args):
    with tracer.start_as_current_span("charge-card") as span:
        log.info("charging %s", args["sku"])
        ctx.enqueue("receipt", {"sku": args["sku"]})
        return format(span.get_span_context().span_id, "016x")


@forge.query(public=True)
async def price(ctx, args):
    with tracer.start_as_current_span("look-up-price"):
        return 42


@forge.job
def receipt(ctx, args):
    with tracer.start_as_current_span("send-receipt"):
        ctx.db.execute("SELECT %s::text AS sku, 'paid' AS state", [args["sku"]])
        log.info("receipt for %s", args["sku"])


@forge.query(public=True)
def fetch(ctx, args):
    return requests.get(args["url"], timeout=5).status_code


@forge.query(public=True)
def provider(ctx, args):
    return type(trace.get_tracer_provider()).__name__


@forge.query(public=True)
def numbers(ctx, args):
    return len(ctx.db.execute(
        "SELECT n FROM generate_series(1, %s) AS n WHERE n > 0", [args["n"]]).fetchall())
'''


@pytest.fixture
def node(make_app, start_node, database_url, otlp):
    def start(**observability):
        settings = {"enabled": True, "otlp_endpoint": otlp.url, "enable_metrics": False,
                    **observability}
        app = make_app(module=MODULE, node={"roles": ["gateway", "function", "worker"]},
                       observability=settings)
        started = start_node(app, database_url, **FAST_EXPORT).wait_ready()
        started.app = app
        return started
    return start


class Downstream:
    """A local HTTP service the app calls; keeps the traceparent of each call."""

    def __init__(self) -> None:
        self.traceparents: list[str | None] = []
        downstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                downstream.traceparents.append(self.headers.get("traceparent"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/stock"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def downstream() -> Iterator[Downstream]:
    service = Downstream()
    yield service
    service.server.shutdown()
    service.server.server_close()


def in_trace(otlp, trace_id: str, name: str) -> list[dict]:
    return [s for s in otlp.spans_named(name) if s["trace_id"] == trace_id]


def wait_for_span(otlp, trace_id: str, name: str) -> dict:
    return otlp.wait_for(lambda r: in_trace(r, trace_id, name), message=name)[0]


def test_app_spans_in_a_function_and_a_job_are_children_of_forge_nodes(node, otlp):
    started = node()
    assert call(started.app.port, "provider")[2]["data"] == "TracerProvider"
    _, headers, body = call(started.app.port, "charge", {"sku": "A-1"})
    trace_id = headers["x-trace-id"]
    fn = wait_for_span(otlp, trace_id, "fn.execute")
    charge = wait_for_span(otlp, trace_id, "charge-card")
    assert charge["span_id"] == body["data"]
    assert charge["parent_span_id"] == fn["span_id"]
    assert charge["scope"] == "shop"
    assert charge["resource"] == fn["resource"]  # the node's: service, instance, role, pid
    job = wait_for_span(otlp, trace_id, "job.execute")
    assert job["parent_span_id"] == charge["span_id"]  # enqueued inside the app's span
    receipt = wait_for_span(otlp, trace_id, "send-receipt")
    assert receipt["parent_span_id"] == job["span_id"]
    assert receipt["resource"]["forge.role"] == "worker"
    # an async function runs on the event loop: its span is the current one there too
    _, headers, _ = call(started.app.port, "price")
    fn = wait_for_span(otlp, headers["x-trace-id"], "fn.execute")
    assert wait_for_span(otlp, headers["x-trace-id"], "look-up-price")["parent_span_id"] == \
        fn["span_id"]


def test_an_instrumentation_packages_span_joins_the_requests_trace(node, otlp, downstream):
    started = node()
    _, headers, body = call(started.app.port, "fetch", {"url": downstream.url})
    assert body["data"] == 204
    trace_id = headers["x-trace-id"]
    fn = wait_for_span(otlp, trace_id, "fn.execute")
    [get] = otlp.wait_for(lambda r: [s for s in r.spans if s["trace_id"] == trace_id
                                     and s["scope"].endswith("instrumentation.requests")],
                          message="the requests instrumentation's span")
    assert get["parent_span_id"] == fn["span_id"]
    assert get["name"] == "GET"
    # and the call carried the trace on to the service it called
    assert downstream.traceparents == [f"00-{trace_id}-{get['span_id']}-01"]


def test_an_unsampled_request_records_no_app_spans(node, otlp):
    started = node()
    unsampled = "5bf92f3577b34da6a3ce929d0e0e4736"
    call(started.app.port, "charge", {"sku": "U-1"},
         headers={"traceparent": f"00-{unsampled}-00f067aa0ba902b7-00"})
    started.wait_for_event(None, where=lambda e: e.get("message") == "receipt for U-1")
    sampled = "6bf92f3577b34da6a3ce929d0e0e4736"
    call(started.app.port, "charge", {"sku": "S-1"},
         headers={"traceparent": f"00-{sampled}-00f067aa0ba902b7-01"})
    # each process exports its spans in the order they ended: those of the unsampled call
    # (and of its job, which finished first) would come before these
    wait_for_span(otlp, sampled, "charge-card")
    wait_for_span(otlp, sampled, "send-receipt")
    assert [s["name"] for s in otlp.spans if s["trace_id"] == unsampled] == []


@pytest.mark.parametrize("db_spans", [True, False])
def test_db_spans_record_each_statement_of_functions_and_jobs(node, otlp, db_spans):
    started = node(db_spans=db_spans)
    _, headers, body = call(started.app.port, "numbers", {"n": 3})
    assert body["data"] == 3
    trace_id = headers["x-trace-id"]
    fn = wait_for_span(otlp, trace_id, "fn.execute")
    _, job_headers, _ = call(started.app.port, "charge", {"sku": "Q-1"})
    receipt = wait_for_span(otlp, job_headers["x-trace-id"], "send-receipt")
    wait_for_span(otlp, job_headers["x-trace-id"], "fn.execute")  # the gateway's, too
    # a statement's span ends before its function's or job's: had it been recorded, it
    # would have been exported with them or before
    queries = in_trace(otlp, trace_id, "db.query")
    job_queries = in_trace(otlp, job_headers["x-trace-id"], "db.query")
    if not db_spans:
        assert queries == job_queries == []
        return
    [query] = queries
    assert query["parent_span_id"] == fn["span_id"]
    assert query["attributes"] == {
        "db.system.name": "postgresql", "db.operation.name": "SELECT",
        "db.query.text": "SELECT n FROM generate_series(?, %s) AS n WHERE n > ?",
        "db.response.returned_rows": 3}
    by_role = {q["resource"]["forge.role"]: q for q in job_queries}
    assert len(by_role) == len(job_queries) == 2
    # the enqueue is a statement of the function too (in the app's span)
    assert by_role["gateway"]["attributes"]["db.operation.name"] == "INSERT"
    assert by_role["gateway"]["parent_span_id"] == wait_for_span(
        otlp, job_headers["x-trace-id"], "charge-card")["span_id"]
    job_query = by_role["worker"]
    assert job_query["parent_span_id"] == receipt["span_id"]  # the app's span, current
    assert job_query["attributes"]["db.query.text"] == "SELECT %s::text AS sku, ? AS state"


def test_an_app_log_line_names_the_app_span_it_was_written_in(node, otlp):
    started = node()
    _, headers, body = call(started.app.port, "charge", {"sku": "L-1"})
    trace_id, app_span_id = headers["x-trace-id"], body["data"]
    [exported] = otlp.wait_for(lambda r: [rec for rec in r.logs
                                          if rec["body"] == "charging L-1"], message="log")
    assert (exported["trace_id"], exported["span_id"]) == (trace_id, app_span_id)
    assert exported["attributes"]["request_id"] == headers["x-request-id"]
    console = started.wait_for_event(None, where=lambda e: e.get("message") == "charging L-1")
    assert (console["trace_id"], console["span_id"], console["request_id"]) == \
        (trace_id, app_span_id, headers["x-request-id"])


def test_without_traces_the_api_stays_the_no_op_default(node, otlp):
    started = node(enable_traces=False)
    assert call(started.app.port, "provider")[2]["data"] == "ProxyTracerProvider"
    _, headers, body = call(started.app.port, "charge", {"sku": "N-1"})
    # the app's span is OpenTelemetry's non-recording one, in the request's trace still
    [line] = otlp.wait_for(lambda r: [rec for rec in r.logs if rec["body"] == "charging N-1"],
                           message="log")
    assert (line["trace_id"], line["span_id"]) == (headers["x-trace-id"], body["data"])


OWN_PROVIDER = MODULE + '''

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

mine = InMemorySpanExporter()
own = TracerProvider()
own.add_span_processor(SimpleSpanProcessor(mine))
trace.set_tracer_provider(own)


@forge.query(public=True)
def my_spans(ctx, args):
    return [[s.name, format(s.context.trace_id, "032x")] for s in mine.get_finished_spans()]
'''


def test_a_provider_the_app_set_before_the_fork_is_kept(make_app, start_node, database_url,
                                                       otlp):
    app = make_app(module=OWN_PROVIDER, node={"roles": ["gateway", "function"]},
                   observability={"enabled": True, "otlp_endpoint": otlp.url})
    started = start_node(app, database_url, **FAST_EXPORT).wait_ready()
    started.wait_for_event("telemetry.app_tracer_provider")
    _, headers, _ = call(app.port, "charge", {"sku": "P-1"})
    trace_id = headers["x-trace-id"]
    # the app's span went to the app's exporter, in forge-node's trace; not to forge-node's
    assert ["charge-card", trace_id] in call(app.port, "my_spans")[2]["data"]
    wait_for_span(otlp, trace_id, "fn.execute")
    assert in_trace(otlp, trace_id, "charge-card") == []
