"""OpenTelemetry from a real node to a test collector: spans, metrics and logs, with no code
in the app."""

from __future__ import annotations

import json
import statistics
import time
import urllib.error
import urllib.request

import pytest

from tests.plugins.nodes import wait_until

MODULE = '''
import logging
import forge_node as forge

log = logging.getLogger("shop")


@forge.mutation(public=True)
def place_order(ctx, args):
    log.info("placing order for %s", args["sku"])
    ctx.enqueue("ship", {"sku": args["sku"]})
    return "placed"


@forge.job
def ship(ctx, args):
    log.info("shipping %s", args["sku"])


@forge.query(public=True)
def ping(ctx, args):
    return "pong"


@forge.cron(every_secs=1)
def tick(ctx):
    log.info("tick for %s", ctx.scheduled_for)
'''

FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_BLRP_SCHEDULE_DELAY": "100"}


def call(port, name, args=None, headers=None):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/_api/rpc/{name}", data=json.dumps({"args": args or {}}).encode(),
        method="POST", headers={"content-type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.status, dict(resp.headers), json.load(resp)


def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


@pytest.fixture
def observed(make_app, start_node, database_url, otlp):
    def start(roles=("gateway", "function", "worker", "scheduler"), **observability):
        settings = {"enabled": True, "otlp_endpoint": otlp.url, "metrics_interval_secs": 0.5,
                    **observability}
        app = make_app(module=MODULE, node={"roles": list(roles)}, observability=settings)
        node = start_node(app, database_url, **FAST_EXPORT).wait_ready()
        node.app = app
        return node
    return start


def test_a_request_its_function_and_the_job_it_enqueued_share_one_trace(observed, otlp):
    node = observed()
    _, headers, _ = call(node.app.port, "place_order", {"sku": "A-1"})
    trace_id = headers["x-trace-id"]

    def in_trace(name):
        return [s for s in otlp.spans_named(name) if s["trace_id"] == trace_id]

    # The gateway and the worker export on their own schedules: wait for all three spans.
    otlp.wait_for(lambda r: all(in_trace(name) for name in
                                ("http.request", "fn.execute", "job.execute")),
                  message="the request's, the function's and the job's spans")
    [http_span], [fn_span], [job_span] = (in_trace(name) for name in
                                          ("http.request", "fn.execute", "job.execute"))
    assert http_span["span_id"] == headers["x-span-id"]
    assert http_span["attributes"] == {
        "http.request.method": "POST", "http.route": "/_api/rpc/{name}",
        "http.response.status_code": 200, "request.id": headers["x-request-id"]}
    assert fn_span["parent_span_id"] == http_span["span_id"]
    assert fn_span["attributes"] == {"fn.name": "place_order", "fn.kind": "mutation",
                                     "fn.outcome": "ok"}
    assert job_span["parent_span_id"] == fn_span["span_id"]
    assert job_span["attributes"]["job.type"] == "ship"
    assert job_span["attributes"]["job.attempt"] == 1
    assert job_span["attributes"]["job.outcome"] == "completed"
    resource = http_span["resource"]
    node_id = next(e["node_id"] for e in node.events() if e.get("event") == "node.ready")
    assert (resource["service.name"], resource["service.version"],
            resource["service.instance.id"], resource["forge.role"]) == \
        ("test-app", "0.1.0", node_id, "gateway")
    assert job_span["resource"]["forge.role"] == "worker"


def test_an_inbound_traceparent_puts_the_request_in_that_trace(observed, otlp):
    node = observed()
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    call(node.app.port, "ping", headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    span = otlp.wait_for(lambda r: [s for s in r.spans_named("http.request")
                                    if s["trace_id"] == trace_id], message="span")[0]
    assert span["parent_span_id"] == parent


def test_cron_ticks_are_spans_and_their_runs_join_them(observed, otlp):
    observed()
    tick = otlp.wait_for(lambda r: r.spans_named("cron.tick"), message="cron.tick")[0]
    assert tick["attributes"]["cron.name"] == "tick"
    assert tick["attributes"]["cron.scheduled_for"].endswith("+00:00")
    run = otlp.wait_for(lambda r: [s for s in r.spans_named("job.execute")
                                   if s["trace_id"] == tick["trace_id"]], message="tick run")[0]
    assert run["attributes"]["job.type"] == "cron:tick"


def test_the_metrics_carry_their_labels(observed, otlp):
    node = observed()
    call(node.app.port, "place_order", {"sku": "B-2"})
    get(node.app.port, "/nowhere")
    get(node.app.port, "/_api/rpc/ping")  # 405
    get(node.app.port, "/_api/unknown-route-42")
    wait = otlp.wait_for
    requests = wait(lambda r: [p for p in r.points_named("http_requests_total")
                               if p["attributes"]["path"] == "/_api/rpc/{name}"
                               and p["attributes"]["status"] == 200], message="http counter")
    assert requests[-1]["attributes"] == {"method": "POST", "path": "/_api/rpc/{name}",
                                          "status": 200}
    paths = {p["attributes"]["path"] for p in otlp.points_named("http_requests_total")}
    wait(lambda r: {p["attributes"]["path"] for p in r.points_named("http_requests_total")}
         >= {"frontend", "/_api/*"}, message="collapsed paths")
    paths = {p["attributes"]["path"] for p in otlp.points_named("http_requests_total")}
    assert paths <= {"/_api/rpc/{name}", "frontend", "/_api/*"}, "unmatched paths collapse"
    histogram = wait(lambda r: [p for p in r.points_named("http_request_duration_seconds")
                                if p["attributes"]["path"] == "/_api/rpc/{name}"
                                and p["attributes"]["status"] == 200], message="hist")
    assert histogram[-1]["attributes"] == {"method": "POST", "path": "/_api/rpc/{name}",
                                           "status": 200}
    assert histogram[-1]["bounds"][:3] == [0.001, 0.0025, 0.005]
    assert histogram[-1]["count"] >= 1 and 0 < histogram[-1]["sum"] < 10
    fn = wait(lambda r: r.points_named("fn.executions_total"), message="fn counter")
    assert fn[-1]["attributes"] == {"function": "place_order", "kind": "mutation",
                                    "outcome": "ok"}
    jobs = wait(lambda r: [p for p in r.points_named("job_executions_total")
                           if p["attributes"]["job_type"] == "ship"], message="job counter")
    assert jobs[-1]["attributes"] == {"job_type": "ship", "status": "completed"}
    job_histogram = wait(lambda r: [p for p in r.points_named("job_duration_seconds")
                                    if p["attributes"]["job_type"] == "ship"],
                         message="job histogram")
    assert job_histogram[-1]["attributes"] == {"job_type": "ship", "status": "completed"}
    queues = wait(lambda r: r.points_named("job_queue_depth"), message="queue gauge")
    assert {p["attributes"]["status"] for p in queues} >= {"pending", "running", "dead"}
    nodes = wait(lambda r: [p for p in r.points_named("cluster.nodes")
                            if p["attributes"]["status"] == "active" and p["value"] == 1],
                 message="cluster.nodes")
    assert nodes[-1]["resource"]["forge.role"] == "monitor"
    wait(lambda r: [p for p in r.points_named("cluster.leader") if p["value"] == 1],
         message="leader flag")
    latency = wait(lambda r: r.points_named("node.heartbeat_latency_seconds"), message="lat")
    assert 0 < latency[-1]["value"] < 1


def test_logs_carry_the_trace_of_their_request_and_job(observed, otlp):
    node = observed()
    _, headers, _ = call(node.app.port, "place_order", {"sku": "C-3"})
    trace_id = headers["x-trace-id"]
    records = otlp.wait_for(lambda r: [rec for rec in r.logs if rec["trace_id"] == trace_id
                                       and "shipping" in str(rec["body"])], message="job log")
    placing = otlp.wait_for(lambda r: [rec for rec in r.logs
                                       if "placing order for C-3" in str(rec["body"])],
                            message="gateway log")
    assert placing[0]["trace_id"] == trace_id
    assert placing[0]["attributes"]["request_id"] == headers["x-request-id"]
    assert records[0]["attributes"]["job_id"] >= 1
    console = [e for e in node.events() if e.get("message") == "placing order for C-3"]
    assert console[0]["trace_id"] == trace_id
    assert console[0]["request_id"] == headers["x-request-id"]
    assert console[0]["role"] == "gateway" and console[0]["node_id"]
    shipped = [e for e in node.events() if e.get("message") == "shipping C-3"]
    assert shipped[0]["trace_id"] == trace_id and shipped[0]["job_id"] >= 1


def test_quiet_routes_send_nothing(observed, otlp):
    node = observed(roles=("gateway", "function"))
    for _ in range(3):
        assert get(node.app.port, "/_api/health")[0] == 200
        status, headers = get(node.app.port, "/_api/ready")
        assert status == 200 and len(headers["x-trace-id"]) == 32
    call(node.app.port, "ping")
    otlp.wait_for(lambda r: r.spans_named("http.request"), message="the ping span")
    # the ping came last: its span and metric could not be shipped before those of the
    # health and readiness calls, had there been any
    otlp.wait_for(lambda r: r.points_named("http_requests_total"), message="the ping metric")
    routes = {s["attributes"].get("http.route") for s in otlp.spans_named("http.request")}
    assert routes == {"/_api/rpc/{name}"}
    paths = {p["attributes"]["path"] for p in otlp.points_named("http_requests_total")}
    assert paths == {"/_api/rpc/{name}"}
    access = [e["route"] for e in node.events() if e.get("event") == "http.request"]
    assert access == ["/_api/rpc/{name}"]


def test_nothing_is_sent_when_disabled(make_app, start_node, database_url, otlp):
    app = make_app(module=MODULE, observability={"enabled": False, "otlp_endpoint": otlp.url,
                                                 "metrics_interval_secs": 0.5})
    node = start_node(app, database_url, **FAST_EXPORT).wait_ready()
    _, headers, _ = call(app.port, "place_order", {"sku": "D-4"})
    assert len(headers["x-trace-id"]) == 32  # ids and headers work all the same
    wait_until(lambda: any(e.get("message") == "shipping D-4" for e in node.events()),
               message="the job ran")
    # the console lines still name the request's trace: the function's, and the job's
    [placing] = [e for e in node.events() if e.get("message") == "placing order for D-4"]
    assert (placing["trace_id"], placing["span_id"], placing["request_id"]) == \
        (headers["x-trace-id"], headers["x-span-id"], headers["x-request-id"])
    [shipping] = [e for e in node.events() if e.get("message") == "shipping D-4"]
    assert shipping["trace_id"] == headers["x-trace-id"]
    time.sleep(1.5)  # the silence is the test: three metric intervals, no export
    assert otlp.requests == 0
    assert "monitor" not in node.children()


def test_sampling_ratio_zero_sends_no_spans(observed, otlp):
    node = observed(roles=("gateway", "function"), sampling_ratio=0.0)
    for _ in range(5):
        call(node.app.port, "ping")
    otlp.wait_for(lambda r: r.points_named("http_requests_total"), message="metrics still")
    time.sleep(0.5)  # the silence is the test: no span comes, so none can be waited for
    assert otlp.spans == []


def test_a_dead_collector_does_not_slow_requests(make_app, start_node, database_url,
                                                 black_hole):
    def median_latency(port):
        for _ in range(10):
            call(port, "ping")
        samples = []
        for _ in range(60):
            started = time.perf_counter()
            call(port, "ping")
            samples.append(time.perf_counter() - started)
        return statistics.median(samples)

    quiet = make_app(module=MODULE, node={"roles": ["gateway", "function"]})
    start_node(quiet, database_url).wait_ready()
    dead = make_app(module=MODULE, node={"roles": ["gateway", "function"]},
                    observability={"enabled": True, "otlp_endpoint": black_hole.url,
                                   "metrics_interval_secs": 0.5})
    start_node(dead, database_url, **FAST_EXPORT).wait_ready()
    baseline = median_latency(quiet.port)
    with_dead_collector = median_latency(dead.port)
    assert with_dead_collector - baseline < 0.005, (baseline, with_dead_collector)


def test_the_standard_otel_endpoint_variable_works_without_otlp_endpoint(
        make_app, start_node, database_url, otlp):
    app = make_app(module=MODULE, node={"roles": ["gateway", "function"]},
                   observability={"enabled": True, "enable_metrics": False,
                                  "enable_logs": False})
    start_node(app, database_url, OTEL_EXPORTER_OTLP_ENDPOINT=otlp.url,
               **FAST_EXPORT).wait_ready()
    _, headers, _ = call(app.port, "ping")
    otlp.wait_for(lambda r: [s for s in r.spans if s["trace_id"] == headers["x-trace-id"]],
                  message="spans via OTEL_EXPORTER_OTLP_ENDPOINT")
    assert otlp.points == [] and otlp.logs == []
