"""The deploy artifacts say what forge-node really does: the systemd unit, the Containerfile,
fly.toml, the compose file and the documented forge.toml."""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml

from forge_node import config as config_module
from tests.plugins.apps import AppDir, copy_demo_app, free_port
from tests.plugins.nodes import FORGE_NODE, NodeProcess, forge_cli, node_env

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "forge-node.service"
FLY = REPO / "deploy" / "fly" / "fly.toml"
COMPOSE = REPO / "deploy" / "compose.yaml"
CONTAINERFILE = REPO / "Containerfile"
DRAIN_SECS = config_module.load(REPO / "forge.toml", {}).node.drain_timeout_secs


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_analyze_verify_finds_nothing_wrong(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (CI installs it)")
    installed = shutil.which("forge-node") or str(Path(sys.executable).with_name("forge-node"))
    unit = tmp_path / "forge-node.service"
    unit.write_text(UNIT.read_text().replace("/opt/forge-node/bin/forge-node", installed))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_unit_stops_after_the_drain_and_stops_restart_loops():
    unit = unit_settings()
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert float(unit["TimeoutStopSec"][0]) > DRAIN_SECS
    assert unit["KillMode"] == ["mixed"] and unit["KillSignal"] == ["SIGTERM"]
    assert unit["Restart"] == ["always"] and unit["RestartSec"] == ["5"]
    assert unit["RestartPreventExitStatus"] == ["78"]
    assert unit["EnvironmentFile"] and unit["User"] != ["root"]
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert unit[key] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"] and unit["ReadWritePaths"]
    command = shlex.split(unit["ExecStart"][0])
    assert command[1:3] == ["run", "--config"]


def containerfile_stages() -> list[list[tuple[str, str]]]:
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), rest.strip()))
    return stages


def final_stage() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for instruction, rest in containerfile_stages()[-1]:
        found.setdefault(instruction, []).append(rest)
    return found


def test_the_image_runs_forge_node_as_a_non_root_user():
    stage = final_stage()
    assert len(containerfile_stages()) == 3, "frontend, builder, runtime"
    assert stage["USER"][-1] not in ("root", "0")
    assert stage["STOPSIGNAL"] == ["SIGTERM"]
    assert stage["EXPOSE"] == ["8080"]
    cmd = eval(stage["CMD"][-1])  # exec form: the supervisor is PID 1, no shell between
    assert cmd == ["forge-node", "run", "--config", "/app/forge.toml"]
    assert stage["WORKDIR"] == ["/app"]
    assert any(c.split()[-2:] == ["/src", "./"] for c in stage["COPY"]), "the whole app"
    for instruction, rest in containerfile_stages()[1]:
        if instruction == "COPY" and not rest.startswith("--"):
            for source in rest.split()[:-1]:
                assert (REPO / source).exists(), source


def test_the_image_healthcheck_and_the_compose_healthcheck_pass_on_a_ready_node(
        make_app, start_node, database_url):
    app = make_app(node={"roles": ["gateway", "function"]})
    start_node(app, database_url).wait_ready()
    healthcheck = final_stage()["HEALTHCHECK"][0]
    image_command = eval(healthcheck[healthcheck.index("CMD") + 3:].strip())
    compose_command = yaml.safe_load(COMPOSE.read_text())["x-node"]["healthcheck"]["test"][1:]
    for command in (image_command, compose_command):
        assert "http://127.0.0.1:8080/_api/ready" in command[-1]
        command = [sys.executable, *command[1:]]
        command[-1] = command[-1].replace(":8080/", f":{app.port}/")
        assert subprocess.run(command, timeout=15).returncode == 0


def test_fly_toml_matches_what_forge_node_serves():
    fly = tomllib.loads(FLY.read_text())
    assert fly["kill_signal"] == "SIGTERM" and fly["kill_timeout"] > DRAIN_SECS
    assert fly["http_service"]["internal_port"] == 8080
    assert fly["http_service"]["processes"] == ["web"]
    assert [c["path"] for c in fly["http_service"]["checks"]] == ["/_api/ready"]
    assert fly["checks"]["worker_ready"]["path"] == "/_api/ready"
    assert fly["checks"]["worker_ready"]["port"] == 8080
    assert set(fly["processes"]) == {"web", "worker", "scheduler"}
    release = shlex.split(fly["deploy"]["release_command"])
    assert release[:3] == ["forge-node", "migrate", "up"]


def demo_app(tmp_path: Path) -> Path:
    return copy_demo_app(tmp_path / "app")


@pytest.mark.parametrize("group", ["web", "worker", "scheduler"])
def test_each_fly_process_group_starts_its_roles_and_passes_its_check(
        group, tmp_path, database_url):
    fly = tomllib.loads(FLY.read_text())
    root = demo_app(tmp_path)
    env = node_env(database_url)
    release = shlex.split(fly["deploy"]["release_command"].replace("/app/", f"{root}/"))
    assert forge_cli(*release[1:], env=env).returncode == 0
    command = shlex.split(fly["processes"][group].replace("/app/", f"{root}/"))
    assert command[0] == "env" and command[2] == "forge-node"
    variable, roles = command[1].split("=")
    port = free_port()
    env.update({variable: roles, "PORT": str(port)})
    node = NodeProcess(AppDir(root, port), env, tmp_path / "node.log")
    node.proc = subprocess.Popen([*FORGE_NODE, *command[3:]], env=env, cwd=root,
                                 stdout=(tmp_path / "node.log").open("wb"),
                                 stderr=subprocess.STDOUT)
    try:
        node.wait_ready()
        expected = {r for r in roles.split(",") if r != "function"}
        assert set(node.children()) - {"monitor"} == expected
        check = fly["http_service"]["checks"][0] if group == "web" \
            else fly["checks"]["worker_ready"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{check['path']}", timeout=5) as r:
            assert r.status == 200
    finally:
        node.kill_tree()


def test_compose_runs_postgres_18_and_scales_workers():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert services["postgres"]["image"] == "postgres:18"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    for name in ("web", "worker"):
        service = services[name]
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert service["build"]["dockerfile"] == "Containerfile"
        assert (COMPOSE.parent / service["build"]["context"] / "Containerfile").exists()
        assert service["stop_grace_period"] == "45s"
        assert service["environment"]["DATABASE_URL"].startswith("postgresql://")
    assert services["worker"]["environment"]["FORGE_NODE_ROLES"] == "worker"
    assert "ports" not in services["worker"], "published ports would stop --scale worker=3"
    assert services["web"]["ports"] == ["8080:8080"]


def test_each_compose_service_gets_what_its_roles_need(tmp_path, database_url):
    """With the README's `jwt_secret = "${JWT_SECRET}"` (unset is an error where it is read),
    each service's environment, as compose resolves it with nothing set, passes check."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    config = demo_app(tmp_path) / "forge.toml"
    config.write_text(config.read_text().replace('"${JWT_SECRET:-}"', '"${JWT_SECRET}"'))
    for name in ("web", "worker"):
        given = {key: config_module.substitute(str(value), {})[0]
                 for key, value in services[name]["environment"].items()}
        roles = set(given["FORGE_NODE_ROLES"].split(","))
        assert ("JWT_SECRET" in given) == ({"gateway", "function"} <= roles), name
        env = node_env(database_url, **{**given, "DATABASE_URL": database_url})
        result = forge_cli("check", "--config", str(config), env=env)
        assert result.returncode == 0, f"{name}: {result.stderr}"


def documented_keys(text: str) -> dict[str, set[str]]:
    """{section: keys whose line carries a comment} of a TOML file's text."""
    keys: dict[str, set[str]] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("["):
            section = line.split("]")[0].strip("[")
        elif "=" in line and not line.startswith("#"):
            key = line.split("=")[0].strip()
            keys.setdefault(section, set())
            if "#" in line:
                keys[section].add(key)
    return keys


def test_the_reference_forge_toml_documents_every_key_and_checks_clean(database_url):
    documented = documented_keys((REPO / "forge.toml").read_text())
    for section, cls in config_module.SECTIONS.items():
        for field in dataclasses.fields(cls):
            if field.name == "pools":
                assert "max_concurrent_jobs" in documented["worker.pools.general"]
            elif dataclasses.is_dataclass(field.default_factory):  # a nested table
                for nested in dataclasses.fields(field.default_factory):
                    assert nested.name in documented[f"{section}.{field.name}"], \
                        f"{section}.{field.name}.{nested.name}"
            else:
                assert field.name in documented[section], f"{section}.{field.name}"
    env = node_env(database_url, JWT_SECRET="a-production-secret-of-at-least-32-bytes")
    result = forge_cli("check", "--config", str(REPO / "forge.toml"), env=env)
    assert result.returncode == 0, result.stderr


def guide_commands() -> list[str]:
    text = (REPO / "docs" / "production.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    joined = [block.replace("\\\n", " ") for block in blocks]
    return [line.strip() for block in joined for line in block.splitlines() if line.strip()]


def test_every_command_in_the_guide_is_run_by_tests_or_marked_with_its_platform():
    commands = guide_commands()
    assert commands
    for command in commands:
        if "(needs " in command:
            continue
        words = shlex.split(command, comments=True)
        assert words[0] in ("forge-node", "pip"), command
        if words[0] == "forge-node":
            subcommand = [w for w in words[1:3] if not w.startswith("-") and not w.isdigit()]
            help_text = forge_cli(*subcommand, "--help", env=node_env(None)).stdout
            for option in (w for w in words if w.startswith("--") and w != "--help"):
                assert option in help_text, f"{command}: {option} is not an option"
