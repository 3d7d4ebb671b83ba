"""forge-node: the production runtime for Forge-style Python apps on PostgreSQL.

    import forge_node as forge

    @forge.query(public=True)
    def list_notes(ctx, args): ...
"""

from importlib.metadata import PackageNotFoundError, version

from .app import mutation, query
from .errors import Error, PermanentError

try:
    __version__ = version("forge-node")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = ["Error", "PermanentError", "__version__", "mutation", "query"]
