"""`forge-node check`: refuse what `forge-node run` would refuse, in the same words, without
starting anything: forge.toml, the app, the database and its migrations."""

from __future__ import annotations

import typer

from .. import db
from ..app import load_for_node
from ..config import Config
from ..errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_USAGE, ForgeNodeError
from ..migrations import Migrator, all_migrations
from .common import DEFAULT_CONFIG, ConfigPath, database_url, error, fail, load_config


def check(config_path: ConfigPath = DEFAULT_CONFIG) -> None:
    """Validate forge.toml and the app, then the database and its migrations.

    Exits 0 when all is well, 2 when `run` would refuse to start (exit 78 there: the
    configuration, the app, migration drift, a PostgreSQL too old), 1 when the database
    cannot be reached.
    """
    config = load_config(config_path, EXIT_USAGE)
    for warning in config.warnings:
        print(f"warning: {warning}")
    try:
        load_for_node(config)
    except ForgeNodeError as exc:
        fail(exc, EXIT_USAGE)
    print(f"ok: {config.path} is valid")
    try:
        with database_url(config) as url:
            applied, pending = check_database(config, url)
    except ForgeNodeError as exc:
        error(str(exc))
        raise typer.Exit(EXIT_USAGE if exc.exit_code == EXIT_CONFIG else EXIT_FAILURE) from None
    print(f"ok: migrations: {applied} applied, {pending} pending, none changed or unknown")
    if config.database.direct_url:
        check_direct_url(config)


def check_database(config: Config, url: str) -> tuple[int, int]:
    """Check the server and the migrations as `run` would before applying, then say the
    database answers. An old server is refused before any statement is sent to it."""
    counts = Migrator(url, all_migrations(config.root)).check()
    with db.connect(url, "check") as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
    where = "the embedded PostgreSQL" if config.uses_embedded_database else db.redact(url)
    print(f"ok: database {where} answers (PostgreSQL {version})")
    return counts


def check_direct_url(config: Config) -> None:
    """Behind a transaction-mode pooler: say which work goes where, and that both answer."""
    direct = config.database.direct_url
    try:
        with db.connect(direct, "check") as conn:
            conn.execute("SELECT 1")
    except ForgeNodeError as exc:
        error(f"database.direct_url: {exc}")
        raise typer.Exit(EXIT_FAILURE) from None
    print(f"ok: direct {db.redact(direct)} answers")
    print(f"connections: functions, job claims and completions and jobs' own work go through "
          f"{db.redact(config.database.url)} (a transaction-mode pooler: no prepared "
          f"statements, timeouts set per transaction); migrations, leader locks, LISTEN and "
          f"the node registry go direct to {db.redact(direct)}")
