"""{{name}} end to end: a real node (`forge-node run`) on DATABASE_URL, or on the embedded
PostgreSQL when it is unset, called over HTTP as a client would.

    pip install pytest && pytest
"""

import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[1]
SECRET = "a-test-secret-that-is-at-least-32-bytes-long"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(url: str, node: subprocess.Popen, timeout: float = 90) -> None:
    # generous: the first run of the embedded database creates it (initdb)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and node.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/_api/ready", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"the node was not ready within {timeout}s (exit code {node.poll()})")


@pytest.fixture(scope="module")
def node_url(tmp_path_factory):
    """A node with every role, stopped (SIGTERM, by pid) when the module's tests are done."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "JWT_SECRET": SECRET, "LOG_FORMAT": "text"}
    log = tmp_path_factory.mktemp("node") / "node.log"
    with log.open("wb") as output:
        node = subprocess.Popen([sys.executable, "-m", "forge_node", "run"], cwd=APP, env=env,
                                stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", node)
        yield f"http://127.0.0.1:{port}"
    finally:
        node.terminate()
        try:
            node.wait(45)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()


def token(roles: list[str]) -> str:
    """An HS256 JWT signed with the node's JWT_SECRET, as an identity provider would issue."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"sub": "tester", "roles": roles,
                             "exp": int(time.time()) + 600}).encode())
    signature = hmac.new(SECRET.encode(), f"{header}.{claims}".encode(), hashlib.sha256)
    return f"{header}.{claims}.{b64(signature.digest())}"


def call(url: str, name: str, args: dict | None = None,
         roles: list[str] | None = None) -> tuple[int, dict]:
    headers = {"content-type": "application/json"}
    if roles is not None:
        headers["authorization"] = f"Bearer {token(roles)}"
    request = urllib.request.Request(f"{url}/_api/rpc/{name}", method="POST", headers=headers,
                                     data=json.dumps({"args": args or {}}).encode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def eventually(check, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"not so within {timeout}s")


def test_anyone_lists_the_tasks(node_url):
    status, body = call(node_url, "list_tasks")
    assert status == 200 and isinstance(body["data"], list)


def test_an_editor_adds_a_task_and_the_job_counts_its_words(node_url):
    title = f"write the tests {time.monotonic_ns()}"
    status, body = call(node_url, "add_task", {"title": title}, roles=["editor"])
    assert status == 200, body
    task_id = body["data"]["id"]

    def counted():
        tasks = call(node_url, "list_tasks")[1]["data"]
        return [t for t in tasks if t["id"] == task_id and t["words"] is not None]

    assert eventually(counted)[0]["words"] == 4


def test_adding_a_task_needs_the_editor_role(node_url):
    assert call(node_url, "add_task", {"title": "x"})[0] == 401
    assert call(node_url, "add_task", {"title": "x"}, roles=["viewer"])[0] == 403
    assert call(node_url, "add_task", {"title": " "}, roles=["editor"])[0] == 400


def test_the_cron_records_how_many_tasks_there_are(node_url):
    assert eventually(lambda: call(node_url, "task_counts")[1]["data"])[0]["tasks"] >= 0


def test_the_page_is_served(node_url):
    with urllib.request.urlopen(node_url, timeout=5) as response:
        assert "{{name}}" in response.read().decode()
