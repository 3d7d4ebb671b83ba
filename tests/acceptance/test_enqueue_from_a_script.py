"""`forge.enqueue` from a script of the user's own: no node running, the app not imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.plugins.nodes import forge_cli, node_env

MODULE = '''
import forge_node as forge


@forge.job(max_attempts=7, priority=3)
def send_email(ctx, args):
    return args
'''

SCRIPT = textwrap.dedent('''
    import os
    import psycopg
    import forge_node as forge

    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        print(forge.enqueue(conn, "send_email", {"to": "ada@example.com"}))
''')


@pytest.fixture
def app(make_app, database_url):
    app = make_app(MODULE, node={"roles": ["worker"]})
    assert forge_cli("migrate", "up", "--config", str(app.config_path),
                     env=node_env(database_url)).returncode == 0
    return app


def run_script(folder: Path, database_url: str, **env: str) -> subprocess.CompletedProcess:
    script = folder / "enqueue_one.py"
    script.write_text(SCRIPT)
    return subprocess.run([sys.executable, str(script)], cwd=folder, capture_output=True,
                          text=True, timeout=60, env=node_env(database_url, **env))


def job_row(db, job_id: int) -> tuple:
    return db.execute("SELECT type, args, max_attempts, priority, status FROM forge_jobs "
                      "WHERE id = %s", [job_id]).fetchone()


def test_a_script_in_the_app_folder_enqueues_a_job_of_the_app(app, database_url, db):
    scripts = app.root / "scripts"  # forge.toml is found in a parent too
    scripts.mkdir()
    result = run_script(scripts, database_url)
    assert result.returncode == 0, result.stderr
    assert job_row(db, int(result.stdout)) == (
        "send_email", {"to": "ada@example.com"}, 7, 3, "pending")


def test_a_script_elsewhere_finds_the_app_through_forge_config(app, database_url, db,
                                                                tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_script(elsewhere, database_url, FORGE_CONFIG=str(app.config_path))
    assert result.returncode == 0, result.stderr
    assert job_row(db, int(result.stdout))[0] == "send_email"


def test_a_script_with_no_app_to_find_says_what_to_import(app, database_url, db, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_script(elsewhere, database_url)
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("forge_node.jobs.UnknownJobError: no job named 'send_email': "
                            "no app is imported in this process and no forge.toml was found")
    assert "Import the app module first" in error and "FORGE_CONFIG=" in error
    assert db.execute("SELECT count(*) FROM forge_jobs").fetchone()[0] == 0
