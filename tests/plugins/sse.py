"""The tests' own server-sent-events reader: a real HTTP connection read on a thread, its
events queued as they arrive, so a test waits on the event it expects."""

from __future__ import annotations

import http.client
import json
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Event:
    event: str
    data: Any
    id: str | None
    at: float = field(default_factory=time.monotonic)


class SseStream:
    def __init__(self, port: int, path: str = "/_api/events",
                 headers: dict[str, str] | None = None, read: bool = True) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.conn.request("GET", path, headers={"accept": "text/event-stream", **(headers or {})})
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.events: queue.Queue[Event | None] = queue.Queue()
        self.comments = 0
        self.ended = threading.Event()
        if self.status == 200 and read:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        fields: dict[str, str] = {}
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\r\n")
                if line.startswith(":"):
                    self.comments += 1
                elif not line:
                    if "event" in fields or "data" in fields:
                        data = fields.get("data")
                        self.events.put(Event(fields.get("event", "message"),
                                              json.loads(data) if data else None,
                                              fields.get("id")))
                    fields = {}
                else:
                    name, _, value = line.partition(":")
                    fields[name] = value[1:] if value.startswith(" ") else value
        except Exception:
            pass
        finally:
            self.ended.set()
            self.events.put(None)

    def next(self, timeout: float = 10, skip: tuple[str, ...] = ()) -> Event:
        """The next event not named in `skip`; fails when none comes in time."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                event = self.events.get(timeout=max(0.0, remaining))
            except queue.Empty:
                raise AssertionError(f"no event within {timeout} s") from None
            if event is None:
                self.events.put(None)
                raise AssertionError("the stream ended")
            if event.event not in skip:
                return event

    def quiet_for(self, seconds: float) -> bool:
        """Whether no event arrives for `seconds`."""
        try:
            event = self.events.get(timeout=seconds)
        except queue.Empty:
            return True
        self.events.put(event)
        return False

    def session_id(self) -> str:
        connected = self.next()
        assert connected.event == "connected", connected
        return connected.data["session_id"]

    def close(self) -> None:
        try:
            self.response.fp.raw._sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
        except (AttributeError, OSError):
            pass
        self.conn.close()
