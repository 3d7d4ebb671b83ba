"""The systemd guide of docs/production.md, from a fresh host: each of its commands runs in a
scratch root (its absolute paths moved under it, `sudo` dropped), except those that would
change this machine's users or need systemd; then the unit it installed is verified against
the virtual environment it made, and that environment checks the app with the env file."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.plugins.nodes import node_env

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "production.md"
MOVED = ("/srv/app", "/opt/forge-node", "/etc/forge-node", "/etc/systemd/system")
FRESH_HOST = ("/etc/systemd/system", "/srv", "/opt")  # what a host with systemd has already
NOT_RUN_HERE = {"useradd": "adds a user to this machine",
                "chown": "needs the forge user, which is not added here",
                "systemctl": "needs systemd as this machine's init",
                "journalctl": "needs systemd as this machine's init"}


def guide_commands() -> list[str]:
    section = GUIDE.read_text().split("### systemd\n", 1)[1].split("\n### ", 1)[0]
    [block] = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    return [line.split("# (needs")[0].strip() for line in block.replace("\\\n", " ").splitlines()
            if line.strip()]


def in_scratch_root(command: str, root: Path, checkout: Path) -> str:
    command = command.replace("sudo ", "").replace("/path/to/forge-node", str(checkout))
    for path in MOVED:
        command = command.replace(path, f"{root}{path}")
    return command


def forge_node_checkout(folder: Path) -> Path:
    """What `pip install /path/to/forge-node` needs of a checkout (pip builds in the tree it is
    given, so not the repository's own)."""
    shutil.copytree(REPO / "src", folder / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, folder / name)
    return folder


def test_the_systemd_guide_installs_a_unit_that_verifies_and_an_app_that_checks(
        tmp_path, database_url):
    root, checkout = tmp_path / "root", forge_node_checkout(tmp_path / "forge-node")
    for path in FRESH_HOST:
        Path(f"{root}{path}").mkdir(parents=True)
    skipped = []
    for command in guide_commands():
        program = shlex.split(command.replace("sudo ", ""))[0]
        if program in NOT_RUN_HERE:
            skipped.append(program)
            continue
        result = subprocess.run(["bash", "-c", in_scratch_root(command, root, checkout)],
                                cwd=REPO, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
    assert skipped == ["useradd", "chown", "systemctl", "journalctl"], "a new step not run"

    env_file = root / "etc/forge-node/env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    secrets = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert set(secrets) == {"DATABASE_URL", "JWT_SECRET"} and len(secrets["JWT_SECRET"]) == 64

    # the environment the guide made runs the app it copied, with the env file's variables
    # (the database's URL the test's own: the guide's is a placeholder)
    binary = root / "opt/forge-node/bin/forge-node"
    checked = subprocess.run(
        [str(binary), "check", "--config", str(root / "srv/app/forge.toml")],
        env=node_env(None, **{**secrets, "DATABASE_URL": database_url}), cwd=root / "srv/app",
        capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: the unit was not verified")
    unit = root / "etc/systemd/system/forge-node.service"
    text = unit.read_text()
    for path in MOVED:
        text = text.replace(path, f"{root}{path}")
    unit.write_text(text)
    verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                              text=True, env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"})
    assert (verified.returncode, verified.stdout + verified.stderr) == (0, "")
