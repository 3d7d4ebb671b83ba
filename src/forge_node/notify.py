"""systemd's readiness protocol, written straight to `$NOTIFY_SOCKET` (no dependency)."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def sd_notify(message: str, socket_path: str | None = None) -> bool:
    """Send `message` (e.g. "READY=1") when running under `Type=notify`; False otherwise."""
    address = socket_path or os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("could not notify systemd: %s", exc, extra={"event": "node.notify_failed"})
        return False
    return True
