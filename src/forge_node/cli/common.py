"""What the commands share: the --config option, error reporting, the database to use."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import psycopg
import typer

from .. import config as config_module
from .. import db, redaction
from ..config import Config
from ..embedded import EmbeddedPostgres
from ..errors import EXIT_FAILURE, EXIT_USAGE, ConfigError, ForgeNodeError

log = logging.getLogger("forge_node")
T = TypeVar("T")

ConfigPath = Annotated[Path, typer.Option(
    "--config", "-c", envvar="FORGE_CONFIG", show_default=True,
    help="The app's forge.toml (or set FORGE_CONFIG).")]
DEFAULT_CONFIG = Path("forge.toml")


@dataclass
class State:
    debug: bool = False


STATE = State()


def error(message: str) -> None:
    """One clear line per problem on stderr; the traceback too with --debug."""
    for line in redaction.scrub(message).splitlines():
        print(f"error: {line}", file=sys.stderr)
    if STATE.debug and sys.exc_info()[0] is not None:
        traceback.print_exc(file=sys.stderr)


def fail(exc: ForgeNodeError | str, code: int | None = None) -> NoReturn:
    error(str(exc))
    exit_code = code if code is not None else getattr(exc, "exit_code", 1)
    raise typer.Exit(exit_code)


def load_config(path: Path, exit_code: int = EXIT_USAGE) -> Config:
    try:
        return config_module.load(path)
    except ConfigError as exc:
        fail(exc, exit_code)


def with_connection(config: Config, purpose: str, action: Callable[[psycopg.Connection], T]) -> T:
    """Run `action` on a connection to the node's database; exit 1 with one clear line if not."""
    try:
        with database_url(config) as url, db.connect(url, purpose) as conn:
            return action(conn)
    except psycopg.errors.UndefinedTable:
        fail("the database has no forge-node tables yet: start a node or run "
             "`forge-node migrate up`", EXIT_FAILURE)
    except (ForgeNodeError, psycopg.Error) as exc:
        fail(db.first_line(exc), EXIT_FAILURE)


@contextmanager
def database_url(config: Config) -> Iterator[str]:
    """The configured database, or the embedded development one when none is configured."""
    if not config.uses_embedded_database:
        yield config.database.url
        return
    server = EmbeddedPostgres(config.root / ".forge" / "pgdata")
    url = server.start()
    log.info("no database.url set: using the embedded PostgreSQL in %s (development only) at "
             "%s (psql and psycopg take this URL as it is)", server.data_dir, url,
             extra={"event": "node.embedded_database", "database_url": url})
    try:
        yield url
    finally:
        server.stop()


def direct_url(config: Config, url: str) -> str:
    """Where session work goes (locks, LISTEN, migrations): `[database] direct_url` when the
    node reaches PostgreSQL through a transaction-mode pooler, else the database's URL."""
    return config.database.direct_url or url


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], empty: str) -> str:
    """Rows aligned under their headers, or one line saying there is nothing."""
    if not rows:
        return f"{headers[0]}: {empty}"
    cells = [list(headers), *[["-" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)
