"""A real PostgreSQL for development and tests: the `pgserver` wheel, never production.

It is started by the supervisor before any child is forked, listens on a Unix socket only,
and keeps its data under the app's `.forge/pgdata`. pgserver registers an atexit hook that
stops the server when the last process using it exits; children end with `os._exit`, so only
the process that started it stops it. As root, pgserver runs PostgreSQL as a `pgserver` user.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from .errors import EmbeddedPostgresError

log = logging.getLogger(__name__)


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server = None

    def start(self) -> str:
        """Start (or attach to) the server and return its connection URL."""
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset; /tmp does fine
            warnings.simplefilter("ignore")
            try:
                import pgserver
            except ImportError:
                raise EmbeddedPostgresError(
                    "no database.url is set and the embedded PostgreSQL is not installed; "
                    "set DATABASE_URL, or for development install forge-node[embedded]") from None
        logging.getLogger("pgserver").setLevel(logging.WARNING)
        try:
            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            self._server = pgserver.get_server(self.data_dir, cleanup_mode="stop")
            return self._server.get_uri()
        except Exception as exc:
            raise EmbeddedPostgresError(
                f"the embedded PostgreSQL in {self.data_dir} failed to start: {exc}; "
                f"its log is {self.data_dir / 'log'}") from exc

    def stop(self) -> None:
        """Stop the server unless another process still uses it."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None
