"""forge-node: the production runtime for Forge-style Python apps on PostgreSQL.

    import forge_node as forge

    @forge.query(public=True)
    def list_notes(ctx, args): ...
"""

from importlib.metadata import PackageNotFoundError, version

from .app import cron, job, mutation, query
from .backoff import Backoff
from .errors import Error, PermanentError
from .jobs import UnknownJobError, enqueue, enqueue_many

try:
    __version__ = version("forge-node")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = ["Backoff", "Error", "PermanentError", "UnknownJobError", "__version__", "cron",
           "enqueue", "enqueue_many", "job", "mutation", "query"]
