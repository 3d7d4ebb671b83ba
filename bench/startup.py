"""Startup to ready on an already-migrated database (target: under 2 seconds).

    python bench/startup.py [--runs N]

Measures, per run, the time from spawning `forge-node run` to its `node.ready` log line
(every role's child up) and to the first 200 from /_api/health, then stops it with SIGTERM.
The peer in the same run: a bare falcon app under plain `gunicorn` (gthread, the same
worker count), timed to its first 200. The embedded PostgreSQL's initdb happens once before
any timing, as the target excludes it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _support import free_port, fresh_database, postgres, stop, summary, wait_for_http

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGET_SECS = 2.0


def forge_node_once(app: Path, url: str) -> tuple[float, float]:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "PORT": str(port), "PYTHONUNBUFFERED": "1"}
    log = app / "node.log"
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "forge-node"), "run", "--config",
                                 str(app / "forge.toml")], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        first_200 = wait_for_http(f"http://127.0.0.1:{port}/_api/health") - started
        ready = _wait_for_ready_line(log, started)
    finally:
        stop(proc, 30)
    return ready, first_200


def _wait_for_ready_line(log: Path, started: float) -> float:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("{") and json.loads(line).get("event") == "node.ready":
                return time.monotonic() - started
        time.sleep(0.002)
    raise TimeoutError("no node.ready line")


def bare_gunicorn_once(folder: Path, workers: int) -> float:
    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen([str(BIN / "gunicorn"), "--chdir", str(folder), "-k", "gthread",
                             "--workers", str(workers), "--threads", "8",
                             "-b", f"127.0.0.1:{port}", "bare:app"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return wait_for_http(f"http://127.0.0.1:{port}/_api/health") - started
    finally:
        stop(proc, 30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    workers = min(os.cpu_count() or 1, 8)
    with postgres() as admin_url, tempfile.TemporaryDirectory() as tmp:
        app = Path(tmp) / "demo"
        app.mkdir()
        for name in ("forge.toml", "app.py"):
            shutil.copy(REPO / name, app / name)
        shutil.copytree(REPO / "migrations", app / "migrations")
        (Path(tmp) / "bare.py").write_text(textwrap.dedent('''
            import falcon
            class Health:
                def on_get(self, req, resp):
                    resp.media = {"status": "healthy"}
            app = falcon.App()
            app.add_route("/_api/health", Health())
        '''))
        url = fresh_database(admin_url, "bench_startup")
        subprocess.run([str(BIN / "forge-node"), "migrate", "up", "--config",
                        str(app / "forge.toml")], env={**os.environ, "DATABASE_URL": url},
                       check=True, capture_output=True)
        forge_node_once(app, url)  # warm the page cache and the bytecode
        runs = [forge_node_once(app, url) for _ in range(args.runs)]
        bare = [bare_gunicorn_once(Path(tmp), workers) for _ in range(args.runs)]
    ready = [r for r, _ in runs]
    first_200 = [f for _, f in runs]
    median = sorted(ready)[len(ready) // 2]
    bare_median = sorted(bare)[len(bare) // 2]
    print(f"forge-node run, spawn to node.ready:        {summary(ready)}")
    print(f"forge-node run, spawn to first 200 /health: {summary(first_200)}")
    print(f"bare gunicorn + falcon, spawn to first 200: {summary(bare)}")
    print(f"ratio forge-node ready / bare gunicorn first 200: {median / bare_median:.2f}x")
    verdict = "PASS" if median < TARGET_SECS else "FAIL"
    print(f"target: node.ready under {TARGET_SECS:.1f} s -> {verdict} ({median:.3f} s)")


if __name__ == "__main__":
    main()
