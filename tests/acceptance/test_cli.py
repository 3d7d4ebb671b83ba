"""The forge-node command line: help, check, run's exit codes, migrate and status."""

from __future__ import annotations

import json
import signal
import socket
import struct
import threading

import pytest

from forge_node.migrations import internal_migrations
from tests.plugins.apps import free_port
from tests.plugins.nodes import forge_cli, node_env


def test_bare_forge_node_prints_help():
    result = forge_cli(env=node_env(None))
    assert "Usage: forge-node" in result.stdout + result.stderr
    for command in ("run", "check", "migrate", "status"):
        assert command in result.stdout + result.stderr


def test_check_passes_on_a_valid_config_and_a_live_database(make_app, database_url):
    app = make_app()
    result = forge_cli("check", "--config", str(app.config_path), env=node_env(database_url))
    assert result.returncode == 0, result.stderr
    assert f"ok: {app.config_path} is valid" in result.stdout
    assert "ok: database" in result.stdout


def test_check_reports_every_config_problem_and_exits_2(make_app, database_url):
    app = make_app(gateway={"port": "x", "prot": 1}, node={"roles": ["wroker"]})
    result = forge_cli("check", "--config", str(app.config_path), env=node_env(database_url))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3, result.stderr
    assert "Traceback" not in result.stderr


def test_check_exits_1_when_the_database_cannot_be_reached(make_app):
    app = make_app()
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    result = forge_cli("check", "--config", str(app.config_path), env=node_env(url))
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot connect to PostgreSQL")
    assert "Traceback" not in result.stderr


def test_check_exits_2_when_the_app_module_fails_to_import(make_app, database_url):
    app = make_app(module="import nonexistent_dependency\n")
    result = forge_cli("check", "--config", str(app.config_path), env=node_env(database_url))
    assert result.returncode == 2
    assert "No module named 'nonexistent_dependency'" in result.stderr


def test_check_names_the_unset_variable(make_app):
    app = make_app()
    result = forge_cli("check", "--config", str(app.config_path), env=node_env(None))
    assert result.returncode == 2
    assert 'database.url is "${DATABASE_URL}": the environment variable DATABASE_URL is not ' \
           "set" in result.stderr


def test_debug_shows_the_traceback(make_app):
    app = make_app()
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    result = forge_cli("--debug", "check", "--config", str(app.config_path), env=node_env(url))
    assert result.returncode == 1 and "Traceback" in result.stderr


def test_run_exits_78_on_a_config_error(make_app, database_url):
    app = make_app(cluster={"heartbeat_interval_secs": 5, "dead_threshold_secs": 5})
    result = forge_cli("run", "--config", str(app.config_path), env=node_env(database_url))
    assert result.returncode == 78
    assert "cluster.dead_threshold_secs" in result.stderr


def test_run_exits_78_when_the_app_fails_to_import(make_app, database_url):
    app = make_app(module="raise RuntimeError('boom at import')\n")
    result = forge_cli("run", "--config", str(app.config_path), env=node_env(database_url))
    assert result.returncode == 78
    assert "RuntimeError: boom at import" in result.stderr


def test_run_exits_78_on_migration_drift_without_starting_roles(make_app, database_url):
    app = make_app(migrations={"0001_a.sql": "CREATE TABLE a (x int);\n"})
    env = node_env(database_url)
    assert forge_cli("migrate", "up", "--config", str(app.config_path), env=env).returncode == 0
    app.add_migration("0001_a.sql", "CREATE TABLE a (x int, y int);\n")
    result = forge_cli("run", "--config", str(app.config_path), env=env)
    assert result.returncode == 78
    assert "migrations/0001_a.sql was changed after it was applied" in result.stderr
    assert "role.started" not in result.stdout


def test_run_reads_forge_config_from_the_environment(make_app, database_url):
    app = make_app(cluster={"heartbeat_interval_secs": 5, "dead_threshold_secs": 1})
    env = node_env(database_url, FORGE_CONFIG=str(app.config_path))
    result = forge_cli("run", env=env, cwd=app.root.parent)
    assert result.returncode == 78 and "dead_threshold_secs" in result.stderr


def test_migrate_up_status_and_down(make_app, database_url):
    app = make_app(migrations={"0001_a.sql": "CREATE TABLE a (x int);\n-- @down\nDROP TABLE a;\n"})
    env = node_env(database_url)
    config = ["--config", str(app.config_path)]
    up = forge_cli("migrate", "up", *config, env=env)
    assert up.returncode == 0 and "applied migrations/0001_a.sql" in up.stdout
    status = forge_cli("migrate", "status", *config, env=env)
    assert status.returncode == 0
    internal = [["forge", f"{m.version:04d}", m.name, "applied"] for m in internal_migrations()]
    assert [line.split()[:4] for line in status.stdout.splitlines()[1:]] == [
        *internal, ["app", "0001", "a", "applied"]]
    down = forge_cli("migrate", "down", "--steps", "1", *config, env=env)
    assert down.returncode == 0 and "reverted migrations/0001_a.sql" in down.stdout
    status = forge_cli("migrate", "status", *config, env=env)
    assert "pending" in status.stdout.splitlines()[-1]


def test_status_json_has_the_documented_shape(make_app, start_node, database_url):
    app = make_app()
    node = start_node(app, database_url).wait_ready()
    result = forge_cli("status", "--json", "--config", str(app.config_path),
                       env=node_env(database_url))
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)
    assert set(view) == {"nodes", "leaders", "queues"}
    [row] = view["nodes"]
    assert set(row) == {"id", "hostname", "pid", "roles", "capabilities", "status", "version",
                        "started_at", "restarts", "heartbeat_age_secs"}
    assert (row["pid"], row["status"], row["roles"]) == \
        (node.pid, "active", ["gateway", "function", "worker", "scheduler"])
    assert row["heartbeat_age_secs"] < 5
    assert row["restarts"] == {}
    table = forge_cli("status", "--config", str(app.config_path), env=node_env(database_url))
    assert str(node.pid) in table.stdout and "active" in table.stdout
    node.send(signal.SIGTERM)
    assert node.wait(15) == 0


def test_status_on_an_unmigrated_database_says_what_to_do(make_app, database_url):
    app = make_app()
    result = forge_cli("status", "--config", str(app.config_path), env=node_env(database_url))
    assert result.returncode == 1
    assert "no forge-node tables yet" in result.stderr


class OldPostgres:
    """A server that answers PostgreSQL's startup handshake as version 14 would, and nothing
    more (no PostgreSQL 14 is installed here): enough for the version check that must come
    before any statement."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            with client:
                self.handshake(client)

    @staticmethod
    def handshake(client: socket.socket) -> None:
        while True:
            length, code = struct.unpack("!II", client.recv(8))
            client.recv(length - 8, socket.MSG_WAITALL)
            if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest: not here
                client.sendall(b"N")
                continue
            break

        def message(kind: bytes, body: bytes) -> bytes:
            return kind + struct.pack("!I", len(body) + 4) + body

        client.sendall(message(b"R", struct.pack("!I", 0))  # AuthenticationOk
                       + message(b"S", b"server_version\x0014.11\x00")
                       + message(b"S", b"client_encoding\x00UTF8\x00")
                       + message(b"K", struct.pack("!II", 1, 2))
                       + message(b"Z", b"I"))
        client.recv(1024)  # the first query, never answered: the node must not get this far

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(("command", "code"), [("run", 78), ("check", 2)])
def test_a_postgres_older_than_15_is_refused_before_any_statement(make_app, command, code):
    server = OldPostgres()
    try:
        app = make_app()
        url = f"postgresql://forge@127.0.0.1:{server.port}/forge?sslmode=disable"
        result = forge_cli(command, "--config", str(app.config_path), env=node_env(url))
    finally:
        server.close()
    assert result.returncode == code
    assert "error: PostgreSQL 14.11 is too old: forge-node needs PostgreSQL 15 or newer" in \
        result.stderr.splitlines()
