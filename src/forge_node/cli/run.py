"""`forge-node run`: load the config, migrate under the advisory lock, supervise the roles."""

from __future__ import annotations

import logging

import typer

from .. import __version__
from ..app import load_for_node
from ..cluster import NodeIdentity
from ..errors import EXIT_CONFIG, ForgeNodeError
from ..live import sync_triggers
from ..migrations import Migrator, all_migrations
from ..observability import logs
from .common import DEFAULT_CONFIG, ConfigPath, database_url, direct_url, fail, load_config

log = logging.getLogger("forge_node")


def run(config_path: ConfigPath = DEFAULT_CONFIG) -> None:
    """Start a node: the roles in [node] roles, supervised until SIGTERM."""
    # imported here: the roles pull in gunicorn, falcon and joserfc, which the other
    # commands do not need (and a node pays for once)
    from ..supervisor import Supervisor

    config = load_config(config_path, EXIT_CONFIG)
    node = NodeIdentity.for_this_process(config.node.roles, config.node.worker_capabilities,
                                         __version__)
    logs.configure("supervisor", str(node.id), config.observability.log_level,
                   config.observability.log_format)
    for warning in config.warnings:
        log.warning(warning, extra={"event": "config.warning"})
    try:
        app = load_for_node(config)  # before an embedded PostgreSQL is started for nothing
        with database_url(config) as url:
            direct = direct_url(config, url)
            Migrator(direct, all_migrations(config.root)).up(
                then=lambda conn: sync_triggers(conn, app))
            code = Supervisor(config, url, direct, app, node).run()
    except ForgeNodeError as exc:
        fail(exc)
    raise typer.Exit(code)
