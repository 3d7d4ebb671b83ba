"""`forge-node status`: the cluster as PostgreSQL sees it (nodes, leaders, queues)."""

from __future__ import annotations

import json
from datetime import datetime

import typer

from .. import cluster, jobs
from ..encoding import to_jsonable
from .common import (
    DEFAULT_CONFIG,
    ConfigPath,
    load_config,
    table,
    with_connection,
)


def status(
    config_path: ConfigPath = DEFAULT_CONFIG,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object to stdout."),
) -> None:
    """Show every node, the leader of each leader role, and the job queues."""
    config = load_config(config_path)
    threshold = config.cluster.dead_threshold_secs
    view = with_connection(config, "status", lambda conn: {
        "nodes": cluster.list_nodes(conn, threshold),
        "leaders": cluster.list_leaders(conn, threshold),
        "queues": jobs.queue_depths(conn)})
    if as_json:
        print(json.dumps(to_jsonable(view), indent=2))
    else:
        print(render_table(view))


def render_table(view: dict) -> str:
    lines = [table(
        ["NODE", "HOST", "PID", "ROLES", "CAPABILITIES", "STATUS", "RESTARTS", "VERSION",
         "STARTED", "HEARTBEAT"],
        [[n["id"][:8], n["hostname"], n["pid"], ",".join(n["roles"]),
          ",".join(n["capabilities"]), n["status"], _restarts(n["restarts"]), n["version"],
          _time(n["started_at"]),
          f"{n['heartbeat_age_secs']:.1f}s ago"] for n in view["nodes"]],
        empty="no nodes registered")]
    lines.append(table(["LEADER ROLE", "NODE", "SINCE"],
                       [[r["role"], r["node_id"][:8], _time(r["since"])]
                        for r in view["leaders"]], empty="no leaders"))
    lines.append(table(["CAPABILITY", "PENDING", "RUNNING", "DEAD", "OLDEST PENDING"],
                       [[q["capability"], q["pending"], q["running"], q["dead"],
                         _age(q.get("oldest_pending_age_secs"))] for q in view["queues"]],
                       empty="no jobs"))
    return "\n\n".join(lines)


def _restarts(counts: dict[str, int]) -> str:
    return ",".join(f"{role}:{count}" for role, count in sorted(counts.items())) or "-"


def _time(value: datetime) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"
