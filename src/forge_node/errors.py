"""Every failure forge-node names, and the exit codes an operator (or systemd) sees.

Exit codes follow sysexits where one fits: 78 (EX_CONFIG) marks a failure that a restart
cannot fix, so `RestartPreventExitStatus=78` stops a systemd restart loop.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78


class ForgeNodeError(Exception):
    """Base of the errors forge-node raises on purpose, each with the exit code it maps to."""

    exit_code = EXIT_FAILURE


class ConfigError(ForgeNodeError):
    """forge.toml is unreadable or invalid. Carries every problem found, not only the first."""

    exit_code = EXIT_CONFIG

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class AppLoadError(ForgeNodeError):
    """The app module failed to import or defines something invalid."""

    exit_code = EXIT_CONFIG


class MigrationError(ForgeNodeError):
    """A migration file is malformed, failed to apply, or disagrees with the database (drift)."""

    exit_code = EXIT_CONFIG


class UnsupportedDatabase(ForgeNodeError):
    """The PostgreSQL server is one forge-node cannot run on (older than 15)."""

    exit_code = EXIT_CONFIG


class DatabaseUnavailable(ForgeNodeError):
    """PostgreSQL cannot be reached; retrying later may succeed."""

    exit_code = EXIT_FAILURE


class EmbeddedPostgresError(ForgeNodeError):
    """The development PostgreSQL could not be started."""

    exit_code = EXIT_FAILURE


class Error(Exception):
    """An error an app function raises on purpose; it reaches the client with its code and status.

    `raise forge.Error("CONFLICT", "that name is taken", 409)`
    """

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class PermanentError(Exception):
    """Raised by a job handler when retrying cannot help: the job goes straight to `dead`."""
