"""A real PgBouncer in transaction mode in front of the test PostgreSQL (Debian's `pgbouncer`
package; tests that need it skip, saying why, where it is not installed)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.plugins.postgres import PostgresServer

PGBOUNCER_USER = "pgserver"  # PgBouncer refuses root; the embedded server's user will do


@dataclass
class Pooler:
    port: int
    direct_url: str  # the database itself

    @property
    def url(self) -> str:
        """The same database through PgBouncer."""
        name = urllib.parse.urlsplit(self.direct_url).path.lstrip("/")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def pgbouncer(pg_server: PostgresServer, database_url: str) -> Iterator[Pooler]:
    """PgBouncer in transaction mode on a free port, in front of the test's database."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer; .ci/run does)")
    if pg_server.data_dir is None:
        pytest.skip("PgBouncer tests need the suite's own PostgreSQL (its socket folder)")
    socket_dir = urllib.parse.parse_qs(urllib.parse.urlsplit(pg_server.admin_url).query)["host"][0]
    # its own folder under /tmp: PgBouncer's user cannot reach into pytest's (mode 0700)
    folder = Path(tempfile.mkdtemp(prefix="forge-pgbouncer-"))
    port = _free_port()
    (folder / "pgbouncer.ini").write_text(f"""\
[databases]
* = host={socket_dir} user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
max_client_conn = 2000
default_pool_size = 40
logfile = {folder}/pgbouncer.log
""")
    shutil.chown(folder, PGBOUNCER_USER)
    process = subprocess.Popen([binary, str(folder / "pgbouncer.ini")], user=PGBOUNCER_USER,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pooler = Pooler(port, database_url)
    try:
        _wait_until_it_answers(pooler, process)
        yield pooler
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(folder)


def _wait_until_it_answers(pooler: Pooler, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            with psycopg.connect(pooler.url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
