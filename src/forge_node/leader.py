"""Leader election: one session advisory lock per leader role, on a dedicated connection.

    standby --pg_try_advisory_lock succeeds--> leader --session lost--> standby
       ^                                          |
       +------- resign (unlock + NOTIFY) ---------+

The lock lives exactly as long as the leader's database session: a SIGKILLed node's
session ends, and with it the lock, within milliseconds. The leader proves that its session
still holds the lock about once a second (CHECK_INTERVAL_SECS) and right before it acts; if
the round trip fails, it stops leading at once and competes again. (Checking on every turn
of an idle loop would cost a database round trip for nothing.) Standbys retry every
LEADER_RETRY_SECS and wake on the NOTIFY a leader sends when it stands down cleanly.

The lock session sets `idle_session_timeout` and server-side TCP keepalives, so that
PostgreSQL itself ends the session (and frees the lock) of a leader cut off by the network.
Session advisory locks need a direct connection or session pooling: PgBouncer in transaction
mode would lose the lock between statements.
"""

from __future__ import annotations

import logging
import time
from uuid import UUID

import psycopg

from . import db
from .sql import Queries

log = logging.getLogger(__name__)
Q = Queries.load(__file__, "leader.sql")

LOCK_CLASS_ID = 0x464F5247  # "FORG"; the object id is the role's
ROLE_IDS = {"scheduler": 1}
LEADER_CHANNEL = "forge_leader"
CHECK_INTERVAL_SECS = 1.0
SESSION_SETTINGS = {"idle_session_timeout": 15000, "tcp_keepalives_idle": 5,
                    "tcp_keepalives_interval": 2, "tcp_keepalives_count": 3}


class LeaderElection:
    def __init__(self, url: str, role: str, node_id: UUID, purpose: str) -> None:
        self.url = url
        self.role = role
        self.node_id = node_id
        self.purpose = purpose
        self.is_leader = False
        self.next_check_at = 0.0  # time.monotonic() when the lock is next proved held
        self._db = db.Dedicated(url, f"{purpose} leader", statement_timeout_secs=5,
                                settings=SESSION_SETTINGS)
        self._params = {"class_id": LOCK_CLASS_ID, "role_id": ROLE_IDS[role], "role": role,
                        "node_id": node_id}

    def try_acquire(self) -> bool:
        """Take the lock if it is free; True when this process now leads."""
        conn = self._connection()
        if not conn.execute(Q.try_lock_leadership, self._params).fetchone()[0]:
            return False
        conn.execute(Q.record_leader, self._params)
        self.is_leader = True
        self.next_check_at = time.monotonic() + CHECK_INTERVAL_SECS
        return True

    def still_leader(self, before_acting: bool = False) -> bool:
        """Prove the lock is held when a check is due, or always `before_acting`; a failed
        check ends the leadership."""
        if not before_acting and time.monotonic() < self.next_check_at:
            return self.is_leader
        self.next_check_at = time.monotonic() + CHECK_INTERVAL_SECS
        try:
            held = self._connection().execute(Q.check_leadership, self._params).fetchone()[0]
        except psycopg.Error as exc:
            log.warning("lost the %s leader session: %s", self.role, db.first_line(exc),
                        extra={"event": "leader.lost", "leader_role": self.role})
            self.close()
            return False
        if not held:
            log.warning("no longer holds the %s leader lock", self.role,
                        extra={"event": "leader.lost", "leader_role": self.role})
            self.is_leader = False
        return bool(held)

    def resign(self) -> None:
        """Stand down cleanly: unlock, and wake the standbys at once."""
        conn = self._db.current
        if self.is_leader and conn is not None:
            try:
                conn.execute(Q.resign_leadership, self._params)
            except psycopg.Error as exc:
                log.warning("could not resign cleanly: %s", db.first_line(exc),
                            extra={"event": "leader.resign_failed", "leader_role": self.role})
        self.close()

    def close(self) -> None:
        self.is_leader = False
        self._db.close()

    def _connection(self) -> psycopg.Connection:
        conn = self._db.get()
        if self._db.new_session:
            self.is_leader = False  # the lock went with the old session
        return conn
