"""forge-node as a user outside this repository gets it: a wheel built with `python -m build`,
installed into a new virtual environment, making an app with `forge-node new` that checks,
runs on the test PostgreSQL and passes its own tests; the Containerfile's steps build it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from tests.acceptance.test_deploy import containerfile_stages
from tests.plugins.apps import AppDir, free_port
from tests.plugins.calls import rpc_call
from tests.plugins.nodes import NodeProcess, node_env, wait_until

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SECRET = "a-test-secret-that-is-at-least-32-bytes-long"


def run(*command: str | Path, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True,
                            timeout=600, **kwargs)
    assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    # from a copy: setuptools writes build/ and *.egg-info beside the sources
    source = dist / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    run(sys.executable, "-m", "build", "--outdir", dist, source)
    assert len(list(dist.glob("forge_node-*.tar.gz"))) == 1
    return next(dist.glob("forge_node-*.whl"))


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A new virtual environment with the wheel (and pytest, for the app's tests)."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    run(sys.executable, "-m", "venv", root)
    run(root / "bin" / "pip", "install", "-q", wheel, "pytest")
    return root


def token(roles: list[str]) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"sub": "t", "roles": roles, "exp": int(time.time()) + 600}).encode())
    signature = hmac.new(SECRET.encode(), f"{header}.{claims}".encode(), hashlib.sha256)
    return f"{header}.{claims}.{b64(signature.digest())}"


def test_a_new_app_from_the_wheel_checks_runs_and_passes_its_tests(venv, wheel, tmp_path,
                                                                    database_url):
    forge_node = venv / "bin" / "forge-node"
    run(forge_node, "new", "demo2", cwd=tmp_path)
    app = tmp_path / "demo2"
    assert (app / "wheels" / wheel.name).is_file(), "the wheel it was installed from"
    port = free_port()
    env = node_env(database_url, JWT_SECRET=SECRET, PORT=str(port))
    checked = run(forge_node, "check", cwd=app, env=env)
    assert "ok:" in checked.stdout
    node = NodeProcess(AppDir(app, port), env, tmp_path / "node.log")
    with (tmp_path / "node.log").open("wb") as log:
        node.proc = subprocess.Popen([forge_node, "run"], cwd=app, env=env, stdout=log,
                                     stderr=subprocess.STDOUT)
    try:
        node.wait_ready(60)
        assert rpc_call(port, "list_tasks", {})[0] == 200
        editor = {"authorization": f"Bearer {token(['editor'])}"}
        assert rpc_call(port, "add_task", {"title": "one two"}, {})[0] == 401
        status, body = rpc_call(port, "add_task", {"title": "one two three"}, editor)
        assert status == 200, body
        with psycopg.connect(database_url, autocommit=True) as conn:
            words = wait_until(lambda: conn.execute(
                "SELECT words FROM tasks WHERE id = %s", [body["data"]["id"]]).fetchone()[0],
                timeout=20, message="the job counted the words")
            assert words == 3
            wait_until(lambda: conn.execute("SELECT count(*) FROM task_counts").fetchone()[0],
                       timeout=20, message="a cron tick")
            assert conn.execute("SELECT count(*) FROM forge_jobs WHERE type = 'cron:count_tasks'"
                                " AND status = 'completed'").fetchone()[0] >= 1
        assert rpc_call(port, "task_counts", {})[1]["data"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
            assert "demo2" in page.read().decode()
    finally:
        node.kill_tree()
    # its own tests, with their own node, on the same database
    tests = subprocess.run([venv / "bin" / "python", "-m", "pytest", "-q", "-p",
                            "no:cacheprovider"], cwd=app, capture_output=True, text=True,
                           timeout=300, env={**node_env(database_url),
                                             "PYTEST_DEBUG_TEMPROOT": str(tmp_path)})
    assert tests.returncode == 0, tests.stdout[-4000:]


def shell_steps(stage: int) -> list[str]:
    return [rest for instruction, rest in containerfile_stages()[stage] if instruction == "RUN"]


def test_the_containerfile_steps_install_a_new_app(venv, tmp_path):
    """The frontend, builder and runtime stages' RUN commands, run in the app's folder with
    the image's absolute paths moved under tmp_path and pip from scratch environments."""
    run(venv / "bin" / "forge-node", "new", "demo3", cwd=tmp_path)
    app = tmp_path / "demo3"
    wheels, builder, runtime = tmp_path / "wheels", tmp_path / "builder", tmp_path / "runtime"
    for root in (builder, runtime):
        run(sys.executable, "-m", "venv", root)
    frontend, = shell_steps(0)
    run("sh", "-c", frontend, cwd=app)  # no frontend/package.json: nothing to build
    build, = shell_steps(1)
    # pip's cache may serve the wheels here: the image's --no-cache-dir only keeps it small
    build = build.replace("/wheels", str(wheels)).replace("--no-cache-dir ", "")
    run("sh", "-c", build, cwd=app, env={**os.environ, "PATH": f"{builder}/bin:/usr/bin:/bin"})
    assert any(p.name.startswith("forge_node-") for p in wheels.iterdir())
    install = shell_steps(2)[-1].replace("/wheels", str(wheels))
    assert re.search(r"pip install .*--no-index", install)
    run("sh", "-c", install, cwd=app, env={**os.environ, "PATH": f"{runtime}/bin:/usr/bin:/bin"})
    assert not wheels.exists()
    checked = run(runtime / "bin" / "forge-node", "check", "--help", cwd=app)
    assert "forge.toml" in checked.stdout
    run(runtime / "bin" / "python", "-c", "import forge_node, psycopg, falcon")


def test_the_containerfile_refuses_an_app_with_nothing_to_install(tmp_path):
    build, = shell_steps(1)
    result = subprocess.run(["sh", "-c", build.replace("/wheels", str(tmp_path / "w"))],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1
    assert "no requirements.txt" in result.stderr
    assert shlex.split(containerfile_stages()[0][0][1])[0].startswith("node:26")
