"""`forge-node check` refuses everything `forge-node run` refuses, in the same words: run exits
78, check 2, and both print the same error lines. Config resolved for the node's roles."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.plugins.apps import AppDir
from tests.plugins.nodes import forge_cli, node_env

MIGRATION = {"0001_a.sql": "CREATE TABLE a (x int);\n"}


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def refused_alike(app: AppDir, env: dict[str, str]) -> list[str]:
    """Run check, then run; assert check exits 2 and run 78 with the same error lines;
    return them."""
    config = ["--config", str(app.config_path)]
    checked = forge_cli("check", *config, env=env)
    ran = forge_cli("run", *config, env=env, timeout=30)
    assert (checked.returncode, ran.returncode) == (2, 78), checked.stderr + ran.stderr
    assert errors(checked.stderr) and errors(checked.stderr) == errors(ran.stderr)
    assert "Traceback" not in checked.stderr + ran.stderr
    return errors(checked.stderr)


def changed_migration(app: AppDir, env: dict[str, str]) -> None:
    assert forge_cli("migrate", "up", "--config", str(app.config_path), env=env).returncode == 0
    app.add_migration("0001_a.sql", "CREATE TABLE a (x int, y int);\n")


def deleted_migration(app: AppDir, env: dict[str, str]) -> None:
    assert forge_cli("migrate", "up", "--config", str(app.config_path), env=env).returncode == 0
    (app.root / "migrations" / "0001_a.sql").unlink()


@pytest.mark.parametrize("damage, expected", [
    (changed_migration, "error: migration drift: migrations/0001_a.sql was changed after it "
                        "was applied on "),
    (deleted_migration, "error: migration drift: the database has app migration 0001_a "
                        "applied, but this code has no such file"),
], ids=["changed", "deleted"])
def test_drift_is_refused_by_check_and_run_alike(make_app, database_url, damage, expected):
    app = make_app(migrations=MIGRATION)
    env = node_env(database_url)
    damage(app, env)
    assert refused_alike(app, env)[0].startswith(expected)


def test_check_passes_and_counts_migrations_without_applying_them(make_app, database_url):
    app = make_app(migrations=MIGRATION)
    env = node_env(database_url)
    result = forge_cli("check", "--config", str(app.config_path), env=env)
    assert result.returncode == 0, result.stderr
    assert "ok: migrations: 0 applied" in result.stdout
    status = forge_cli("migrate", "status", "--config", str(app.config_path), env=env)
    assert status.stdout.splitlines()[-1].split()[3] == "pending"


def empty_folder(app: AppDir) -> None:
    (app.root / "site").mkdir()


def file_not_folder(app: AppDir) -> None:
    (app.root / "site").write_text("not a folder")


@pytest.mark.parametrize("prepare, found", [
    (lambda app: None, "does not exist"),
    (empty_folder, "is empty"),
    (file_not_folder, "is not a folder"),
], ids=["missing", "empty", "file"])
def test_a_static_dir_with_nothing_to_serve_is_refused_alike(make_app, database_url, prepare,
                                                            found):
    app = make_app(gateway={"static_dir": "site"})
    prepare(app)
    [line] = refused_alike(app, node_env(database_url))
    assert line == (f'error: {app.config_path}: gateway.static_dir is "site", but '
                    f"{app.root / 'site'} {found}: build the frontend into it, or remove the "
                    f"key to serve no frontend")


MODULES: dict[str, tuple[str, str]] = {
    "bare cron": ('@forge.cron\ndef cleanup(ctx):\n    pass\n',
                  "cron cleanup: @forge.cron needs a schedule ("),
    "cron taking args": ('@forge.cron(every_secs=1)\ndef tick(ctx, args):\n    pass\n',
                         "cron tick: the handler is called as tick(ctx), but it is "
                         "def tick(ctx, args) ("),
    "query without args": ('@forge.query(public=True)\nasync def ping(ctx):\n    pass\n',
                           "query ping: the handler is called as ping(ctx, args), but it is "
                           "async def ping(ctx) ("),
    "job with a required keyword": ('@forge.job\ndef send(ctx, args, *, to):\n    pass\n',
                                    "job send: the handler is called as send(ctx, args), but "
                                    "it is def send(ctx, args, *, to) ("),
    "job named positionally": ('@forge.job("send")\ndef send(ctx, args):\n    pass\n',
                               "job send: @forge.job takes keywords only, got 'send' ("),
    "import error": ("import nonexistent_dependency\n",
                     'the app module "app" failed to import: ModuleNotFoundError: No module '
                     "named 'nonexistent_dependency' ("),
}


@pytest.mark.parametrize("case", MODULES)
def test_a_decorator_used_wrongly_is_refused_alike_at_load(make_app, database_url, case):
    body, expected = MODULES[case]
    app = make_app(module="import forge_node as forge\n\n" + body)
    [line] = refused_alike(app, node_env(database_url))
    assert line.startswith(f"error: {expected}{app.root / 'app.py'}:"), line
    if case == "bare cron":
        assert line.endswith('; write @forge.cron("*/5 * * * *") or @forge.cron(every_secs=60) '
                             "above def cleanup(ctx)")


GUARDED = '''
import forge_node as forge


@forge.query
def secret(ctx, args):
    return "guarded"


@forge.job
def work(ctx, args):
    return None
'''

README_AUTH = {"jwt_secret": "${JWT_SECRET}"}  # the README's form: unset is an error


def test_a_worker_only_node_needs_no_auth_and_no_frontend(
        make_app: Callable[..., AppDir], start_node, database_url):
    app = make_app(module=GUARDED, auth=README_AUTH, gateway={"static_dir": "site"},
                   node={"roles": ["worker"]})
    env = node_env(database_url)
    result = forge_cli("check", "--config", str(app.config_path), env=env)
    assert result.returncode == 0, result.stderr
    start_node(app, database_url).wait_ready()


def test_a_node_serving_functions_still_needs_its_jwt_secret(make_app, database_url):
    app = make_app(module=GUARDED, auth=README_AUTH, node={"roles": ["gateway", "function"]})
    result = forge_cli("check", "--config", str(app.config_path), env=node_env(database_url))
    assert result.returncode == 2
    assert 'auth.jwt_secret is "${JWT_SECRET}": the environment variable JWT_SECRET is not ' \
           "set" in result.stderr
