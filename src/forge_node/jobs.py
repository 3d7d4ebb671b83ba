"""The job queue in `forge_jobs` (schema/0002_jobs.sql draws its state machine).

Enqueueing happens on the caller's connection, so a job exists only if the caller commits
(and a NOTIFY at commit wakes the workers). Everything a worker does to a claimed job is
fenced on (id, node_id, attempts): a node that was presumed dead and comes back cannot
complete, retry or bury a job another node took over.
"""

from __future__ import annotations

import datetime
import os
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from opentelemetry import propagate
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from .app import AppRegistry, JobSpec, current_registry, load_app
from .encoding import to_jsonable
from .observability.logs import REQUEST
from .sql import Queries

Q = Queries.load(__file__, "jobs.sql")

NOTIFY_CHANNEL = "forge_jobs"
CANCEL_CHANNEL = "forge_jobs_cancel"
ANY_CAPABILITY = "*"  # the capability of jobs any worker may run
RECLAIM_LOCK_KEY = 0x464F524745_02
CLEANER_LOCK_KEY = 0x464F524745_03
STATUSES = ("pending", "running", "completed", "dead", "cancelled")


class UnknownJobError(ValueError):
    """Enqueueing a job name the app does not define: an error now, not a dead job later."""


@dataclass
class ClaimedJob:
    id: int
    type: str
    args: Any
    attempt: int
    max_attempts: int
    timeout_secs: float | None
    cancel_requested: bool
    capability: str
    trace_context: str | None = None


def job_spec(name: str) -> JobSpec:
    registry = current_registry()
    if not registry.module and not registry.jobs:  # a script that imported no app
        registry = load_app_of_script(name)
    spec = registry.jobs.get(name)
    if spec is None:
        known = ", ".join(sorted(registry.jobs)) or "none"
        module = f" in the app module {registry.module!r}" if registry.module else ""
        raise UnknownJobError(f"no job named {name!r}{module} (known jobs: {known})")
    return spec


def load_app_of_script(job_name: str) -> AppRegistry:
    """Import the app of FORGE_CONFIG's forge.toml, or of the one in the working folder or
    a parent, as `forge-node run` would: a script that enqueues needs the app's job
    definitions (their retries, timeout, capability), not only their names."""
    path = find_config()
    if path is None:
        where = (f"FORGE_CONFIG={os.environ['FORGE_CONFIG']} does not exist"
                 if os.environ.get("FORGE_CONFIG") else
                 f"none in {Path.cwd()} or its parents, and FORGE_CONFIG is not set")
        raise UnknownJobError(
            f"no job named {job_name!r}: no app is imported in this process and no forge.toml "
            f"was found ({where}). Import the app module first (the module `[project] app` "
            f"names, e.g. `import app`), run from the app's folder, or set "
            f"FORGE_CONFIG=/path/to/forge.toml")
    try:
        module = tomllib.loads(path.read_text(encoding="utf-8")).get("project", {}).get("app")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UnknownJobError(f"no job named {job_name!r}: {path} cannot be read to find the "
                              f"app's module: {exc}") from None
    return load_app(path.parent, module or "app")  # "app": [project] app's default


def find_config() -> Path | None:
    """FORGE_CONFIG's file when it is set, else forge.toml in the working folder or the
    nearest parent that has one."""
    if os.environ.get("FORGE_CONFIG"):
        path = Path(os.environ["FORGE_CONFIG"]).resolve()
        return path if path.is_file() else None
    cwd = Path.cwd()
    return next((folder / "forge.toml" for folder in (cwd, *cwd.parents)
                 if (folder / "forge.toml").is_file()), None)


def enqueue(conn: psycopg.Connection, name: str, args: dict[str, Any] | None = None, *,
            run_at: datetime.datetime | None = None, delay_secs: float | None = None,
            priority: int | None = None, idempotency_key: str | None = None) -> int:
    """Add a job in `conn`'s current transaction; return its id.

    An `idempotency_key` already used by an unfinished job returns that job's id instead.
    """
    params = _insert_params(name, args, run_at, delay_secs, priority, idempotency_key)
    row = conn.execute(Q.insert_job, params).fetchone()
    if row is None:  # the key names an unfinished job
        row = conn.execute(Q.find_job_by_key, {"idempotency_key": idempotency_key}).fetchone()
    return row[0]


async def enqueue_async(conn: psycopg.AsyncConnection, name: str,
                        args: dict[str, Any] | None = None, *,
                        run_at: datetime.datetime | None = None,
                        delay_secs: float | None = None, priority: int | None = None,
                        idempotency_key: str | None = None) -> int:
    """`enqueue` on an async connection (an `async def` function's ctx.db)."""
    params = _insert_params(name, args, run_at, delay_secs, priority, idempotency_key)
    row = await (await conn.execute(Q.insert_job, params)).fetchone()
    if row is None:  # the key names an unfinished job
        cursor = await conn.execute(Q.find_job_by_key, {"idempotency_key": idempotency_key})
        row = await cursor.fetchone()
    return row[0]


def _insert_params(name: str, args: dict[str, Any] | None, run_at: datetime.datetime | None,
                   delay_secs: float | None, priority: int | None,
                   idempotency_key: str | None) -> dict[str, Any]:
    params = _job_params(job_spec(name), run_at, delay_secs, priority)
    params.update(args=Jsonb(_json_object(args)), idempotency_key=idempotency_key)
    return params


def enqueue_many(conn: psycopg.Connection, name: str, args_list: Iterable[dict[str, Any]], *,
                 run_at: datetime.datetime | None = None, delay_secs: float | None = None,
                 priority: int | None = None) -> list[int]:
    """Add many jobs of one kind in a single statement; return their ids in order."""
    spec = job_spec(name)
    params = _job_params(spec, run_at, delay_secs, priority)
    params["args"] = [Jsonb(_json_object(args)) for args in args_list]
    return list(conn.execute(Q.insert_jobs, params).fetchone()[0])


def _job_params(spec: JobSpec, run_at: datetime.datetime | None, delay_secs: float | None,
                priority: int | None) -> dict[str, Any]:
    if run_at is not None and delay_secs is not None:
        raise ValueError("pass run_at or delay_secs, not both")
    if delay_secs is not None:
        run_at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=delay_secs)
    return {"type": spec.name, "capability": spec.worker_capability or ANY_CAPABILITY,
            "priority": spec.priority if priority is None else priority,
            "max_attempts": spec.max_attempts, "timeout_secs": spec.timeout_secs,
            "run_at": run_at, "trace_context": current_traceparent()}


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span (or request, when it has no span of its own),
    so the job's run joins the enqueuer's trace."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    traceparent = carrier.get("traceparent")
    if traceparent is None and (request := REQUEST.get()) is not None:
        flags = "01" if request.sampled else "00"
        traceparent = f"00-{request.trace_id}-{request.span_id}-{flags}"
    return traceparent


def _json_object(args: dict[str, Any] | None) -> dict[str, Any]:
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise TypeError(f"job args must be a dict (a JSON object), got {type(args).__name__}")
    return to_jsonable(args)


class WorkerQueue:
    """The queue as one worker process sees it, on its own dedicated connection."""

    def __init__(self, conn: psycopg.Connection, node_id: UUID) -> None:
        self.conn = conn
        self.node_id = node_id

    def claim(self, capability: str, limit: int, take_any: bool) -> list[ClaimedJob]:
        rows = self.conn.execute(Q.claim_jobs, {"capability": capability, "limit": limit,
                                                "take_any": take_any, "node_id": self.node_id})
        return [ClaimedJob(*row) for row in rows.fetchall()]

    def complete(self, done: Sequence[tuple[int, int, Any]]) -> dict[int, str]:
        """Record results of (id, attempt, result); return each recorded job's new status
        (completed, or cancelled when asked to stop). Missing ids were fenced out."""
        updated = self.conn.execute(Q.complete_jobs, {
            "ids": [job_id for job_id, _, _ in done],
            "attempts": [attempt for _, attempt, _ in done],
            "results": [None if result is None else Jsonb(result) for _, _, result in done],
            "node_id": self.node_id}).fetchall()
        return dict(updated)

    def retry(self, job: ClaimedJob, delay_secs: float, error: str) -> str | None:
        """Back to pending after `delay_secs` (or cancelled, if asked); None if fenced out."""
        row = self.conn.execute(Q.retry_job, {**self._fence(job), "delay_secs": delay_secs,
                                              "error": error}).fetchone()
        return row and row[0]

    def bury(self, job: ClaimedJob, error: str) -> str | None:
        """Dead (or cancelled, if asked); None if fenced out."""
        row = self.conn.execute(Q.bury_job, {**self._fence(job), "error": error}).fetchone()
        return row and row[0]

    def release(self, jobs: Sequence[ClaimedJob]) -> list[int]:
        """Give claimed jobs back to pending, their attempt uncounted."""
        if not jobs:
            return []
        rows = self.conn.execute(Q.release_jobs, {
            "ids": [j.id for j in jobs], "attempts": [j.attempt for j in jobs],
            "node_id": self.node_id}).fetchall()
        return [row[0] for row in rows]

    def reclaim_jobs_of_node(self, error: str, held: Sequence[int] = ()) -> list[tuple[int, str]]:
        """Jobs running on this node but not `held` by its worker, back to pending (or dead
        when that was their last attempt)."""
        rows = self.conn.execute(Q.reclaim_jobs_of_node, {"node_id": self.node_id,
                                                          "error": error, "held": list(held)})
        return rows.fetchall()

    def cancel_requests(self) -> set[int]:
        rows = self.conn.execute(Q.list_cancel_requests, {"node_id": self.node_id})
        return {row[0] for row in rows.fetchall()}

    def _fence(self, job: ClaimedJob) -> dict[str, Any]:
        return {"id": job.id, "attempt": job.attempt, "node_id": self.node_id}


def set_progress(conn: psycopg.Connection, job: ClaimedJob, node_id: UUID, percent: int,
                 message: str | None) -> None:
    conn.execute(Q.set_job_progress, {"id": job.id, "attempt": job.attempt, "node_id": node_id,
                                      "percent": percent, "message": message})


def reclaim_jobs_of_dead_nodes(conn: psycopg.Connection) -> list[tuple] | None:
    """Running jobs of dead or vanished nodes back to pending; None when another node is at it."""
    with conn.transaction():
        if not conn.execute(Q.try_xact_lock, {"key": RECLAIM_LOCK_KEY}).fetchone()[0]:
            return None
        return conn.execute(Q.reclaim_jobs_of_dead_nodes).fetchall()


def delete_finished_jobs(conn: psycopg.Connection, retention_secs: float, batch: int,
                         max_batches: int) -> int | None:
    """Delete finished jobs older than the retention, in small batches, one node at a time."""
    deleted = 0
    for _ in range(max_batches):
        with conn.transaction():
            if not conn.execute(Q.try_xact_lock, {"key": CLEANER_LOCK_KEY}).fetchone()[0]:
                return None if deleted == 0 else deleted
            count = conn.execute(Q.delete_finished_jobs, {"retention_secs": retention_secs,
                                                          "batch": batch}).rowcount
        deleted += count
        if count < batch:
            break
    return deleted


def cancel_job(conn: psycopg.Connection, job_id: int) -> str | None:
    """Cancel a pending job, or ask a running one to stop; its status, None if not cancellable."""
    row = conn.execute(Q.cancel_job, {"id": job_id}).fetchone()
    return row and row[0]


def retry_dead_job(conn: psycopg.Connection, job_id: int) -> bool:
    return conn.execute(Q.retry_dead_job, {"id": job_id}).fetchone() is not None


def get_job(conn: psycopg.Connection, job_id: int) -> dict[str, Any] | None:
    return conn.cursor(row_factory=dict_row).execute(Q.get_job, {"id": job_id}).fetchone()


def list_jobs(conn: psycopg.Connection, status: str | None = None, type: str | None = None,
              limit: int = 50) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(Q.list_jobs, {"status": status, "type": type, "limit": limit}).fetchall()


def queue_depths(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return conn.cursor(row_factory=dict_row).execute(Q.queue_depths).fetchall()


async def job_states(conn: psycopg.AsyncConnection, job_ids: list[int]) -> dict[int, dict]:
    """Status, attempts and progress of each job that exists, by id (live job streams)."""
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(Q.job_states, {"ids": job_ids})
    return {row["id"]: row for row in await cursor.fetchall()}
