"""Which replicas a gateway worker's queries may read from.

Each replica is checked every CHECK_SECS on a connection of its own, with short timeouts: one
that does not answer, or whose replay lags the primary by more than `[database]
replica_max_lag_secs`, is skipped until a check passes again; with none usable, queries read
from the primary. A replica with nothing left to replay has no lag, however old its last
replayed transaction (an idle primary sends none).
"""

from __future__ import annotations

import asyncio
import logging

import psycopg

from .. import db

log = logging.getLogger(__name__)

CHECK_SECS = 1.0
CHECK_TIMEOUT_SECS = 2.0
LAG = """
SELECT CASE WHEN NOT pg_is_in_recovery()
              OR pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn()
            THEN 0
            ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)
       END::float8
"""


class ReplicaHealth:
    def __init__(self, urls: tuple[str, ...], max_lag_secs: float, purpose: str) -> None:
        self.urls = urls
        self.max_lag_secs = max_lag_secs
        self.purpose = purpose
        self.usable = [True] * len(urls)  # read from threads: a list of bools, swapped whole
        self._conns: list[psycopg.AsyncConnection | None] = [None] * len(urls)

    async def watch(self) -> None:
        """Check every replica every CHECK_SECS, for the life of the worker."""
        while True:
            for index in range(len(self.urls)):
                usable = await self.check(index)
                if usable != self.usable[index]:
                    self.usable[index] = usable
                    log.warning("replica %d %s", index, "is used again" if usable else
                                "is skipped: queries read from the other replicas or the primary",
                                extra={"event": "replica.back" if usable else "replica.skipped",
                                       "replica": db.redact(self.urls[index])})
            await asyncio.sleep(CHECK_SECS)

    async def check(self, index: int) -> bool:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_SECS):
                conn = self._conns[index]
                if conn is None or conn.closed or conn.broken:
                    conn = self._conns[index] = await psycopg.AsyncConnection.connect(
                        self.urls[index], autocommit=True,
                        **db.connection_kwargs(f"{self.purpose} replica check"))
                cursor = await conn.execute(LAG)
                lag = (await cursor.fetchone())[0]
        except (psycopg.Error, TimeoutError) as exc:
            log.debug("replica %d check failed: %s", index, db.first_line(exc))
            conn, self._conns[index] = self._conns[index], None
            if conn is not None:
                await conn.close()
            return False
        return lag <= self.max_lag_secs
