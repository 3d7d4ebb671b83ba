import io
import json
import logging

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from forge_node.observability import logs


def capture(role="worker"):
    stream = io.StringIO()
    logs.configure(role, "node-1", "info", "json", stream)
    return stream


def lines(stream):
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_lines_carry_role_node_trace_request_and_job():
    stream = capture()
    tracer = TracerProvider().get_tracer("test")
    token = logs.REQUEST.set(logs.RequestIds("req-1", "a" * 32, "b" * 16, False))
    job = logs.JOB_ID.set(42)
    try:
        with tracer.start_as_current_span("work") as span:
            logging.getLogger("app").info("hello %s", "there", extra={"event": "x.y"})
            context = span.get_span_context()
    finally:
        logs.REQUEST.reset(token)
        logs.JOB_ID.reset(job)
    logging.getLogger("app").warning("outside")
    inside, outside = lines(stream)
    assert inside["message"] == "hello there" and inside["event"] == "x.y"
    assert (inside["role"], inside["node_id"], inside["request_id"], inside["job_id"]) == \
        ("worker", "node-1", "req-1", 42)
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert "trace_id" not in outside and "request_id" not in outside
    assert outside["level"] == "warning" and outside["ts"].endswith("Z")
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_a_request_without_a_span_is_named_by_its_own_ids():
    stream = capture("gateway")
    token = logs.REQUEST.set(logs.RequestIds("req-2", "c" * 32, "d" * 16, False))
    try:
        logging.getLogger("app").info("no span here")
    finally:
        logs.REQUEST.reset(token)
    [line] = lines(stream)
    assert (line["request_id"], line["trace_id"], line["span_id"]) == \
        ("req-2", "c" * 32, "d" * 16)


def test_opentelemetry_complaints_pass_once_a_minute_per_logger():
    stream = capture()
    exporter_log = logging.getLogger("opentelemetry.exporter.otlp.test")
    for _ in range(5):
        exporter_log.warning("collector unreachable")
    logging.getLogger("opentelemetry.sdk.other").warning("another complaint")
    for _ in range(3):
        logging.getLogger("app").warning("app lines are never limited")
    messages = [line["message"] for line in lines(stream)]
    assert messages.count("collector unreachable") == 1
    assert messages.count("another complaint") == 1
    assert messages.count("app lines are never limited") == 3


def test_text_format_for_humans():
    stream = io.StringIO()
    logs.configure("gateway", "n", "info", "text", stream)
    logging.getLogger("x").info("started", extra={"event": "node.ready"})
    line = stream.getvalue().strip()
    assert "[gateway] started" in line and "event=node.ready" in line
