"""The LISTEN connection's reconnects: a server that refuses it is tried again once a second,
not on every turn of the loop that polls it."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator

import pytest

from forge_node.listener import Listener


@pytest.fixture
def refusing_server() -> Iterator[tuple[int, list[int]]]:
    """A TCP port that accepts connections and hangs up at once; yields (port, accepts)."""
    accepts: list[int] = []
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            accepts.append(1)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepts
    stop.set()
    thread.join()
    server.close()


def test_a_failed_connect_is_retried_after_a_second_not_on_every_poll(refusing_server,
                                                                         monkeypatch, caplog):
    port, accepts = refusing_server
    clock = [1000.0]
    monkeypatch.setattr("forge_node.listener.time.monotonic", lambda: clock[0])
    listener = Listener(f"postgresql://u@127.0.0.1:{port}/db?connect_timeout=2",
                        ("forge_jobs",), "test", logging.getLogger("forge_node.roles.worker"))
    assert listener.poll() is None  # tried, failed: the caller polls the queue meanwhile
    [lost] = [r for r in caplog.records if getattr(r, "event", None) == "listener.lost"]
    assert lost.name == "forge_node.roles.worker"  # the role that uses it, not the listener
    attempts = len(accepts)
    assert attempts >= 1
    assert all(listener.poll() == [] for _ in range(50))
    assert len(accepts) == attempts
    clock[0] += 1.0
    assert listener.poll() is None
    assert len(accepts) > attempts
    assert listener.fds() == []
