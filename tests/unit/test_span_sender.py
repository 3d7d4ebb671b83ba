"""The span sender speaks HTTP to a collector the way the SDK's exporter would: the same
OTEL_EXPORTER_OTLP_* settings, one kept-alive connection, and failures it survives."""

from __future__ import annotations

import datetime
import gzip
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, set_span_in_context

from forge_node.observability.spans import (
    OtlpHttpSender,
    RatioSampler,
    ShipperProcessor,
    SpanFactory,
    SpanShipper,
)


class Collector:
    """Records each POST and the connection it came on; answers `status`, and with
    `drop_connections` hangs up after every answer without saying so (as an idle timeout
    would)."""

    def __init__(self, status: int = 200, drop_connections: bool = False,
                 tls: ssl.SSLContext | None = None) -> None:
        self.posts: list[tuple[int, dict[str, str], bytes]] = []
        self.paths: list[str] = []
        self.connections = 0
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                collector.connections += 1
                self.connection_number = collector.connections

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                collector.posts.append((self.connection_number, dict(self.headers), body))
                collector.paths.append(self.path)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()
                if drop_connections:
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_port}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collectors() -> Iterator[list[Collector]]:
    started: list[Collector] = []
    yield started
    for collector in started:
        collector.stop()


def start(collectors: list[Collector], **options: object) -> Collector:
    collector = Collector(**options)  # type: ignore[arg-type]
    collectors.append(collector)
    return collector


def test_batches_share_one_kept_alive_connection(collectors):
    collector = start(collectors)
    sender = OtlpHttpSender(collector.url + "?tenant=shop", 5.0, environ={
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "authorization=Bearer%20abc,x-tenant=shop"})
    try:
        assert all(sender.send(f"batch {n}".encode(), 1) for n in range(3))
    finally:
        sender.close()
    assert [(connection, body) for connection, _, body in collector.posts] == [
        (1, b"batch 0"), (1, b"batch 1"), (1, b"batch 2")]
    assert collector.paths == ["/v1/traces?tenant=shop"] * 3
    headers = collector.posts[0][1]
    assert headers["Content-Type"] == "application/x-protobuf"
    assert headers["authorization"] == "Bearer abc"
    assert headers["x-tenant"] == "shop"


def test_gzip_when_the_environment_asks_for_it(collectors):
    collector = start(collectors)
    sender = OtlpHttpSender(collector.url, 5.0,
                            environ={"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"})
    try:
        assert sender.send(b"spans" * 100, 1)
    finally:
        sender.close()
    [(_, headers, body)] = collector.posts
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == b"spans" * 100


def test_a_connection_the_collector_hung_up_on_is_replaced(collectors):
    collector = start(collectors, drop_connections=True)
    sender = OtlpHttpSender(collector.url, 5.0, environ={})
    try:
        assert all(sender.send(f"batch {n}".encode(), 1) for n in range(3))
    finally:
        sender.close()
    assert [body for _, _, body in collector.posts] == [b"batch 0", b"batch 1", b"batch 2"]
    assert collector.connections == 3


def test_a_refusal_fails_the_batch_and_is_logged_once_a_minute(collectors, caplog):
    collector = start(collectors, status=503)
    sender = OtlpHttpSender(collector.url, 5.0, environ={})
    with caplog.at_level(logging.WARNING, logger="forge_node.observability.spans"):
        try:
            assert not sender.send(b"one", 1)
            assert not sender.send(b"two", 1)
        finally:
            sender.close()
    assert len(collector.posts) == 2
    [record] = caplog.records
    assert "refused 1 spans: HTTP 503" in record.getMessage()


def test_a_collector_that_is_down_fails_the_batch(caplog):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    sender = OtlpHttpSender(f"http://127.0.0.1:{port}/v1/traces", 5.0, environ={})
    with caplog.at_level(logging.WARNING, logger="forge_node.observability.spans"):
        assert not sender.send(b"spans", 7)
    assert "could not export 7 spans" in caplog.records[0].getMessage()


def test_the_endpoint_comes_from_the_environment_when_forge_toml_has_none(collectors):
    collector = start(collectors)
    base = collector.url.removesuffix("/v1/traces")
    sender = OtlpHttpSender(None, 5.0, environ={"OTEL_EXPORTER_OTLP_ENDPOINT": base + "/"})
    try:
        assert sender.send(b"spans", 1)
    finally:
        sender.close()
    assert sender.endpoint == collector.url


def test_https_trusts_the_certificate_the_environment_names(collectors, tmp_path):
    certificate, key = self_signed_certificate(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(certificate, key)
    collector = start(collectors, tls=tls)
    trusting = OtlpHttpSender(collector.url, 5.0, environ={
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE": str(certificate)})
    distrusting = OtlpHttpSender(collector.url, 5.0, environ={})
    try:
        assert trusting.send(b"spans", 1)
        assert not distrusting.send(b"spans", 1)  # an unknown issuer
    finally:
        trusting.close()
        distrusting.close()
    assert [body for _, _, body in collector.posts] == [b"spans"]


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "collector")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256()))
    certificate_path, key_path = folder / "collector.pem", folder / "collector.key"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return certificate_path, key_path


@pytest.mark.parametrize(("endpoint", "environ", "complaint"), [
    ("https://127.0.0.1:4318/v1/traces",
     {"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nowhere/collector.pem"}, "No such file"),
    ("ftp://collector/v1/traces", {}, "not an http(s) URL"),
])
def test_bad_settings_fail_each_batch_and_never_the_process(endpoint, environ, complaint,
                                                            caplog):
    sender = OtlpHttpSender(endpoint, 5.0, environ=environ)
    with caplog.at_level(logging.WARNING, logger="forge_node.observability.spans"):
        assert not sender.send(b"spans", 1)
        assert not sender.send(b"spans", 1)
    [record] = caplog.records
    assert complaint in record.getMessage()


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_an_export_thread_with_a_bad_batch_setting_still_sleeps(collectors, caplog, value):
    """A zero or negative delay or batch size would spin the export thread; the defaults
    are used instead, and the bad value named."""
    environ = {"OTEL_BSP_SCHEDULE_DELAY": value, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": value,
               "OTEL_BSP_MAX_QUEUE_SIZE": value}
    shipper = SpanShipper(OtlpHttpSender(start(collectors).url, 5.0, environ={}),
                          Resource.create({}), "test", "0", environ=environ)
    try:
        before = time.process_time()
        time.sleep(0.5)  # the window the export thread is measured over
        assert time.process_time() - before < 0.05
        assert (shipper.delay_secs, shipper.batch, shipper.queue.maxlen) == (5.0, 512, 2048)
    finally:
        shipper.shutdown()
    warned = {r.getMessage().split("=")[0] for r in caplog.records
              if getattr(r, "event", "") == "telemetry.bad_setting"}
    assert warned == {"OTEL_BSP_SCHEDULE_DELAY", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                      "OTEL_BSP_MAX_QUEUE_SIZE"}


def test_the_sdks_spans_go_out_in_forge_nodes_batches_under_their_own_scope(collectors):
    """A span of the app (the SDK's) and one of forge-node's, queued together, leave in one
    request, one scope each; `force_flush` on the provider sends them at once."""
    collector = start(collectors)
    shipper = SpanShipper(OtlpHttpSender(collector.url, 5.0, environ={}),
                          Resource.create({"service.name": "shop"}), "forge_node", "0",
                          environ={"OTEL_BSP_SCHEDULE_DELAY": "60000"})
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(ShipperProcessor(shipper))
    try:
        ours = SpanFactory(RatioSampler(1.0), shipper).start(
            "fn.execute", trace.INVALID_SPAN_CONTEXT, SpanKind.INTERNAL, None)
        with provider.get_tracer("shop").start_as_current_span(
                "charge-card", context=set_span_in_context(ours)):
            pass
        ours.end()
        assert provider.force_flush(5000)
        [(_, _, body)] = collector.posts
    finally:
        shipper.shutdown()
    [resource_spans] = ExportTraceServiceRequest.FromString(body).resource_spans
    spans = {scope.scope.name: [(s.name, s.parent_span_id) for s in scope.spans]
             for scope in resource_spans.scope_spans}
    parent = ours.get_span_context().span_id.to_bytes(8, "big")
    assert spans == {"forge_node": [("fn.execute", b"")], "shop": [("charge-card", parent)]}
