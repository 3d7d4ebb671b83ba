"""Plain HTTP calls to a node's API, as a client outside it makes them."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def post_json(port: int, path: str, body: dict, headers: dict[str, str] | None = None,
              timeout: float = 15) -> tuple[int, dict]:
    """POST a JSON body to the node: the status and the JSON answer, whatever the status."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json",
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def rpc_call(port: int, name: str, args: dict[str, Any],
             headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """POST /_api/rpc/<name>: the status and the JSON body, whatever the status."""
    return post_json(port, f"/_api/rpc/{name}", {"args": args}, headers)


def rpc_data(port: int, name: str, args: dict[str, Any]) -> Any:
    """The call's data; the call must succeed."""
    status, body = rpc_call(port, name, args)
    assert status == 200, body
    return body["data"]
