import socket

from forge_node.notify import sd_notify


def test_messages_reach_a_notify_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        assert sd_notify("READY=1", path)
        assert server.recv(100) == b"READY=1"


def test_without_a_socket_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False


def test_an_unreachable_socket_is_reported_not_raised(tmp_path):
    assert sd_notify("READY=1", str(tmp_path / "nobody-listens")) is False
