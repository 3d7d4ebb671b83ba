"""`forge-node status`: the cluster as PostgreSQL sees it (nodes, leaders, queues)."""

from __future__ import annotations

import json
from datetime import datetime

import psycopg
import typer

from .. import cluster, db
from ..errors import EXIT_FAILURE, ForgeNodeError
from .common import DEFAULT_CONFIG, ConfigPath, database_url, fail, load_config


def status(
    config_path: ConfigPath = DEFAULT_CONFIG,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object to stdout."),
) -> None:
    """Show every node, the leader of each leader role, and the job queues."""
    config = load_config(config_path)
    threshold = config.cluster.dead_threshold_secs
    try:
        with database_url(config) as url, db.connect(url, "status") as conn:
            view = {"nodes": cluster.list_nodes(conn, threshold),
                    "leaders": cluster.list_leaders(conn, threshold),
                    "queues": []}
    except psycopg.errors.UndefinedTable:
        fail("the database has no forge-node tables yet: start a node or run "
             "`forge-node migrate up`", EXIT_FAILURE)
    except (ForgeNodeError, psycopg.Error) as exc:
        fail(db.first_line(exc), EXIT_FAILURE)
    if as_json:
        print(json.dumps(view, default=_json_value, indent=2))
    else:
        print(render_table(view))


def render_table(view: dict) -> str:
    lines = [_table(
        ["NODE", "HOST", "PID", "ROLES", "CAPABILITIES", "STATUS", "VERSION", "STARTED",
         "HEARTBEAT"],
        [[n["id"][:8], n["hostname"], n["pid"], ",".join(n["roles"]),
          ",".join(n["capabilities"]), n["status"], n["version"], _time(n["started_at"]),
          f"{n['heartbeat_age_secs']:.1f}s ago"] for n in view["nodes"]],
        empty="no nodes registered")]
    lines.append(_table(["LEADER ROLE", "NODE", "SINCE"],
                        [[r["role"], r["node_id"][:8], _time(r["since"])]
                         for r in view["leaders"]], empty="no leaders"))
    lines.append(_table(["CAPABILITY", "PENDING", "RUNNING", "DEAD", "OLDEST PENDING"],
                        [[q["capability"], q["pending"], q["running"], q["dead"],
                          _age(q.get("oldest_pending_age_secs"))] for q in view["queues"]],
                        empty="no jobs"))
    return "\n\n".join(lines)


def _table(headers: list[str], rows: list[list], empty: str) -> str:
    if not rows:
        return f"{headers[0]}: {empty}"
    cells = [headers, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def _time(value: datetime) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"


def _json_value(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")
