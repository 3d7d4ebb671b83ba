"""`forge-node migrate up|down|status`."""

from __future__ import annotations

import typer

from ..errors import EXIT_FAILURE, ForgeNodeError
from ..migrations import Migrator, all_migrations
from .common import DEFAULT_CONFIG, ConfigPath, database_url, direct_url, fail, load_config

app = typer.Typer(help="Apply, revert or list migrations.", no_args_is_help=True)


def _migrator_run(config_path, action):
    config = load_config(config_path)
    try:
        with database_url(config) as url:
            return action(Migrator(direct_url(config, url), all_migrations(config.root)))
    except ForgeNodeError as exc:
        fail(exc, EXIT_FAILURE)


@app.command("up")
def up(config_path: ConfigPath = DEFAULT_CONFIG) -> None:
    """Apply every pending migration (forge-node's own first), under the migration lock."""
    applied = _migrator_run(config_path, lambda m: m.up())
    for migration in applied:
        print(f"applied {migration.label}")
    if not applied:
        print("nothing to apply: the database is up to date")


@app.command("down")
def down(
    config_path: ConfigPath = DEFAULT_CONFIG,
    steps: int = typer.Option(1, "--steps", min=1, help="How many app migrations to revert."),
) -> None:
    """Revert the newest app migrations by running their `-- @down` sections."""
    reverted = _migrator_run(config_path, lambda m: m.down(steps))
    for migration in reverted:
        print(f"reverted {migration.label}")
    if not reverted:
        print("nothing to revert")


@app.command("status")
def status(config_path: ConfigPath = DEFAULT_CONFIG) -> None:
    """List every migration: applied, pending, changed since applied, or unknown to this code."""
    states = _migrator_run(config_path, lambda m: m.status())
    print(f"{'SOURCE':<7} {'VERSION':<8} {'NAME':<32} {'STATE':<8} APPLIED AT")
    for s in states:
        applied = f"{s.applied_at:%Y-%m-%d %H:%M:%S}" if s.applied_at else "-"
        print(f"{s.source:<7} {s.version:04d}     {s.name:<32} {s.state:<8} {applied}")
    if any(s.state in ("changed", "unknown") for s in states):
        raise typer.Exit(EXIT_FAILURE)
