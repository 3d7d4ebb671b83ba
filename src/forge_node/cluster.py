"""The cluster registry (`forge_nodes`): nodes find each other only through this table.

Each supervisor registers its node, heartbeats it, and takes part in marking silent nodes
dead. All times are the database's `now()`, so clocks of different machines never disagree.

    starting --children ready--> active <--a role down / back up--> degraded
        \\______________________________|__________________________/
                                        v
                   draining (SIGTERM) --> row deleted (clean stop)
    any status --heartbeat older than dead_threshold_secs--> dead
    dead --its supervisor heartbeats again--> registered again (same id)
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from .sql import Queries

Q = Queries.load(__file__, "cluster.sql")

REAPER_LOCK_KEY = 0x464F524745_01
DEAD_NODE_RETENTION_SECS = 24 * 3600


@dataclass(frozen=True)
class NodeIdentity:
    id: uuid.UUID
    hostname: str
    pid: int
    roles: tuple[str, ...]
    capabilities: tuple[str, ...]
    version: str

    @classmethod
    def for_this_process(cls, roles: tuple[str, ...], capabilities: tuple[str, ...],
                         version: str) -> NodeIdentity:
        """A new identity per run: a restarted node is a new node to the cluster."""
        return cls(uuid.uuid4(), socket.gethostname(), os.getpid(), roles, capabilities,
                   version)


def register_node(conn: psycopg.Connection, node: NodeIdentity, status: str) -> None:
    conn.execute(Q.register_node, {
        "id": node.id, "hostname": node.hostname, "pid": node.pid, "roles": list(node.roles),
        "capabilities": list(node.capabilities), "status": status, "version": node.version})


def heartbeat_node(conn: psycopg.Connection, node_id: uuid.UUID, status: str,
                   latency_ms: float | None = None) -> bool:
    """Refresh the node's row (with how long the previous heartbeat took); False when the
    row says dead or is gone."""
    row = conn.execute(Q.heartbeat_node, {"id": node_id, "status": status,
                                          "latency_ms": latency_ms}).fetchone()
    return row is not None


def heartbeat_latency_ms(conn: psycopg.Connection, node_id: uuid.UUID) -> float | None:
    row = conn.execute(Q.get_heartbeat_latency, {"id": node_id}).fetchone()
    return row and row[0]


def node_status(conn: psycopg.Connection, node_id: uuid.UUID) -> str | None:
    """The node's status in the registry; None when it has no row."""
    row = conn.execute(Q.node_status, {"id": node_id}).fetchone()
    return None if row is None else row[0]


def record_restarts(conn: psycopg.Connection, node_id: uuid.UUID,
                    restarts: dict[str, int]) -> None:
    conn.execute(Q.record_restarts, {"id": node_id, "restarts": Jsonb(restarts)})


def deregister_node(conn: psycopg.Connection, node_id: uuid.UUID) -> None:
    conn.execute(Q.deregister_node, {"id": node_id})


def mark_dead_nodes(conn: psycopg.Connection, threshold_secs: float) -> list[dict] | None:
    """Mark nodes silent for longer than the threshold dead; None when another node is at it."""
    with conn.transaction():
        if not conn.execute(Q.try_lock_reaper, {"key": REAPER_LOCK_KEY}).fetchone()[0]:
            return None
        cur = conn.cursor(row_factory=dict_row)
        dead = cur.execute(Q.mark_dead_nodes, {"threshold": threshold_secs}).fetchall()
        conn.execute(Q.forget_dead_nodes, {"after": DEAD_NODE_RETENTION_SECS})
        return dead


def list_nodes(conn: psycopg.Connection, threshold_secs: float) -> list[dict]:
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(Q.list_nodes, {"threshold": threshold_secs}).fetchall()


def list_leaders(conn: psycopg.Connection, threshold_secs: float) -> list[dict]:
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(Q.list_leaders, {"threshold": threshold_secs}).fetchall()
