"""Throwaway app folders (forge.toml, migrations/, an app module) for tests to run."""

from __future__ import annotations

import shutil
import socket
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomlkit

DEFAULT_MODULE = '''
import forge_node as forge


@forge.query(public=True)
def ping(ctx, args):
    return "pong"
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class AppDir:
    root: Path
    port: int

    @property
    def config_path(self) -> Path:
        return self.root / "forge.toml"

    def write_config(self, sections: dict[str, dict[str, Any]]) -> None:
        self.config_path.write_text(tomlkit.dumps(sections))

    def add_migration(self, filename: str, sql: str) -> Path:
        path = self.root / "migrations" / filename
        path.parent.mkdir(exist_ok=True)
        path.write_text(textwrap.dedent(sql))
        return path

    def write_module(self, code: str, name: str = "app") -> None:
        (self.root / f"{name}.py").write_text(textwrap.dedent(code))


def default_sections(port: int) -> dict[str, dict[str, Any]]:
    return {
        "project": {"name": "test-app", "app": "app"},
        "database": {"url": "${DATABASE_URL}"},
        "gateway": {"port": port, "workers": 1, "threads": 4},
        "cluster": {"heartbeat_interval_secs": 0.5, "dead_threshold_secs": 2},
        "node": {"roles": ["gateway", "function", "worker", "scheduler"],
                 "drain_timeout_secs": 10},
    }


def build_app(root: Path, module: str = DEFAULT_MODULE,
              migrations: dict[str, str] | None = None, **sections: dict[str, Any]) -> AppDir:
    """An app folder at `root` (created) with a free gateway port; sections merge over the
    defaults."""
    root.mkdir()
    app = AppDir(root, free_port())
    merged = default_sections(app.port)
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    app.write_config(merged)
    app.write_module(module)
    for filename, sql in (migrations or {}).items():
        app.add_migration(filename, sql)
    return app


@pytest.fixture
def make_app(tmp_path: Path) -> Callable[..., AppDir]:
    """make_app(node={"roles": ["worker"]}, ...) -> an app folder; sections merge over defaults.

    Each call makes a new folder with its own free gateway port.
    """
    count = 0

    def make(module: str = DEFAULT_MODULE, migrations: dict[str, str] | None = None,
             **sections: dict[str, Any]) -> AppDir:
        nonlocal count
        count += 1
        return build_app(tmp_path / f"app{count}", module, migrations, **sections)

    return make


REPO = Path(__file__).resolve().parents[2]


def copy_demo_app(root: Path) -> Path:
    """The repository's demo app as its image holds it (forge.toml, app.py, migrations/ and
    the built frontend its static_dir names), in a new folder `root`."""
    root.mkdir()
    for name in ("forge.toml", "app.py"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "migrations", root / "migrations")
    shutil.copytree(REPO / "frontend" / "build", root / "frontend" / "build")
    return root
