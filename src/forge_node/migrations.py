"""Schema migrations: forge-node's own (`schema/`), then the app's (`migrations/`).

A migration is `NNNN_name.sql`; an optional line `-- @down` starts the part that
`forge-node migrate down` runs. Every run holds one session advisory lock for its whole
duration, so nodes starting together on an empty database apply each file exactly once: the
first takes the lock and migrates, the others wait, then find nothing pending. Each migration
runs in its own transaction together with its record, so a node that dies mid-run leaves
either the whole migration or none of it, and its lock ends with its session.

Applied files are recorded with a checksum of their text. A file changed after it was applied,
or a recorded migration this code does not have, is drift: startup stops and names it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from . import db
from .errors import MigrationError
from .sql import Queries

log = logging.getLogger(__name__)
Q = Queries.load(__file__, "migrations.sql")

MIGRATION_LOCK_KEY = 0x464F524745  # "FORGE"
INTERNAL = "forge"
APP = "app"
_FILENAME = re.compile(r"^(\d+)_([A-Za-z0-9_\-]+)\.sql$")
_DOWN_MARKER = re.compile(r"^--\s*@down\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Migration:
    source: str
    version: int
    name: str
    path: Path
    up: str
    down: str | None
    checksum: str

    @property
    def label(self) -> str:
        folder = "forge_node/schema" if self.source == INTERNAL else "migrations"
        return f"{folder}/{self.path.name}"


@dataclass(frozen=True)
class MigrationState:
    migration: Migration | None
    source: str
    version: int
    name: str
    state: str  # applied | pending | changed | unknown
    applied_at: datetime | None


def internal_migrations() -> list[Migration]:
    return discover(Path(__file__).with_name("schema"), INTERNAL)


def app_migrations(root: Path) -> list[Migration]:
    return discover(root / "migrations", APP)


def discover(directory: Path, source: str) -> list[Migration]:
    """Every NNNN_name.sql in `directory`, in version order; a misnamed file is an error."""
    if not directory.is_dir():
        return []
    found: dict[int, Migration] = {}
    problems = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        match = _FILENAME.match(path.name)
        if not match:
            problems.append(f"{path}: a migration file must be named NNNN_name.sql")
            continue
        version = int(match.group(1))
        if version in found:
            problems.append(f"{path}: version {version} is also used by {found[version].path.name}")
            continue
        found[version] = _read(path, source, version, match.group(2))
    if problems:
        raise MigrationError("; ".join(problems))
    return [found[v] for v in sorted(found)]


def _read(path: Path, source: str, version: int, name: str) -> Migration:
    text = path.read_text(encoding="utf-8")
    parts = _DOWN_MARKER.split(text, maxsplit=1)
    down = parts[1].strip() if len(parts) == 2 else None
    checksum = hashlib.sha256(text.encode()).hexdigest()
    return Migration(source, version, name, path, parts[0].strip(), down, checksum)


class Migrator:
    """Applies, reverts and reports migrations on one dedicated session that holds the lock."""

    def __init__(self, url: str, migrations: list[Migration]) -> None:
        self.url = url
        self.migrations = migrations

    def up(self, then: Callable[[psycopg.Connection], None] | None = None) -> list[Migration]:
        """Apply every pending migration in order; return those applied by this call. `then`
        runs after them, still under the lock (the live queries' triggers)."""
        with self._locked_session() as conn:
            applied = self._applied(conn)
            self._check_drift(applied)
            pending = [m for m in self.migrations if (m.source, m.version) not in applied]
            for migration in pending:
                self._apply(conn, migration)
            if then is not None:
                then(conn)
            return pending

    def check(self) -> tuple[int, int]:
        """Refuse what `up` would refuse before applying anything (a PostgreSQL too old, drift),
        without the lock and without changing anything; return (applied, pending) counts."""
        with db.connect(self.url, "check") as conn:
            db.check_server_version(conn)
            exists = conn.execute(Q.migrations_table_exists).fetchone()[0]
            applied = self._applied(conn) if exists else {}
        self._check_drift(applied)
        return len(applied), len(self.migrations) - len(applied)

    def down(self, steps: int = 1) -> list[Migration]:
        """Revert the last `steps` applied app migrations, newest first."""
        with self._locked_session() as conn:
            applied = self._applied(conn)
            self._check_drift(applied)
            known = [m for m in self.migrations if m.source == APP
                     and (m.source, m.version) in applied]
            targets = list(reversed(known))[:steps]
            for migration in targets:
                self._revert(conn, migration)
            return targets

    def status(self) -> list[MigrationState]:
        """Every known and recorded migration with its state; takes no lock and changes nothing."""
        with db.connect(self.url, "migrate") as conn:
            exists = conn.execute(Q.migrations_table_exists).fetchone()[0]
            applied = self._applied(conn) if exists else {}
        states = []
        for m in self.migrations:
            row = applied.pop((m.source, m.version), None)
            if row is None:
                states.append(MigrationState(m, m.source, m.version, m.name, "pending", None))
            else:
                state = "applied" if row["checksum"] == m.checksum else "changed"
                states.append(MigrationState(m, m.source, m.version, m.name, state,
                                             row["applied_at"]))
        for (source, version), row in sorted(applied.items()):
            states.append(MigrationState(None, source, version, row["name"], "unknown",
                                         row["applied_at"]))
        return states

    @contextmanager
    def _locked_session(self) -> Iterator[psycopg.Connection]:
        with db.connect(self.url, "migrate") as conn:
            db.check_server_version(conn)
            key = {"key": MIGRATION_LOCK_KEY}
            if not conn.execute(Q.try_lock_migrations, key).fetchone()[0]:
                log.info("another node is migrating; waiting for the migration lock",
                         extra={"event": "migrations.waiting"})
                conn.execute(Q.lock_migrations, key)
            try:
                conn.execute(Q.create_migrations_table)
                yield conn
            finally:
                if not conn.closed and not conn.broken:
                    conn.execute(Q.unlock_migrations, key)

    def _applied(self, conn: psycopg.Connection) -> dict[tuple[str, int], dict]:
        cur = conn.cursor(row_factory=dict_row)
        rows = cur.execute(Q.list_applied_migrations).fetchall()
        return {(row["source"], row["version"]): row for row in rows}

    def _check_drift(self, applied: dict[tuple[str, int], dict]) -> None:
        known = {(m.source, m.version): m for m in self.migrations}
        problems = []
        for key, row in sorted(applied.items()):
            migration = known.get(key)
            if migration is None:
                problems.append(
                    f"the database has {row['source']} migration {row['version']:04d}_"
                    f"{row['name']} applied, but this code has no such file; deploy the code "
                    f"that has it, or revert it with that code")
            elif migration.checksum != row["checksum"]:
                problems.append(
                    f"{migration.label} was changed after it was applied on "
                    f"{row['applied_at']:%Y-%m-%d %H:%M:%S %Z}; restore it and put the change "
                    f"in a new migration")
        if problems:
            raise MigrationError("migration drift: " + "; ".join(problems))

    def _apply(self, conn: psycopg.Connection, migration: Migration) -> None:
        try:
            with conn.transaction():
                if migration.up:
                    conn.execute(migration.up)
                conn.execute(Q.record_migration, {
                    "source": migration.source, "version": migration.version,
                    "name": migration.name, "checksum": migration.checksum})
        except psycopg.Error as exc:
            raise MigrationError(f"{migration.label} failed and was rolled back: "
                                 f"{db.first_line(exc)}") from exc
        log.info("applied migration %s", migration.label,
                 extra={"event": "migrations.applied", "migration": migration.label})

    def _revert(self, conn: psycopg.Connection, migration: Migration) -> None:
        if migration.down is None:
            raise MigrationError(f"{migration.label} has no '-- @down' section, so it cannot "
                                 f"be reverted")
        try:
            with conn.transaction():
                if migration.down:
                    conn.execute(migration.down)
                conn.execute(Q.forget_migration, {"source": migration.source,
                                                  "version": migration.version})
        except psycopg.Error as exc:
            raise MigrationError(f"reverting {migration.label} failed and was rolled back: "
                                 f"{db.first_line(exc)}") from exc
        log.info("reverted migration %s", migration.label,
                 extra={"event": "migrations.reverted", "migration": migration.label})


def all_migrations(root: Path) -> list[Migration]:
    """forge-node's own migrations first, then the app's."""
    return internal_migrations() + app_migrations(root)
