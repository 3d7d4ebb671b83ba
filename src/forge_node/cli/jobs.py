"""`forge-node jobs list|show|retry|cancel|enqueue`: operate the job queue."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
import typer

from .. import jobs
from ..app import load_app
from ..encoding import to_jsonable
from ..errors import EXIT_FAILURE, EXIT_USAGE, AppLoadError
from .common import (
    DEFAULT_CONFIG,
    ConfigPath,
    fail,
    load_config,
    table,
    with_connection,
)

app = typer.Typer(help="List, inspect, retry, cancel and enqueue jobs.", no_args_is_help=True)

def _with_connection(config_path, action: Callable[[psycopg.Connection], Any]) -> Any:
    return with_connection(load_config(config_path), "jobs", action)


@app.command("list")
def list_command(
    config_path: ConfigPath = DEFAULT_CONFIG,
    status: str | None = typer.Option(None, "--status", help=f"One of {', '.join(jobs.STATUSES)}."),
    job_type: str | None = typer.Option(None, "--type", help="Only jobs of this type."),
    limit: int = typer.Option(50, "--limit", min=1, help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON array."),
) -> None:
    """List jobs, newest first."""
    if status is not None and status not in jobs.STATUSES:
        fail(f"--status must be one of {', '.join(jobs.STATUSES)}, got {status!r}", EXIT_USAGE)
    rows = _with_connection(config_path, lambda c: jobs.list_jobs(c, status, job_type, limit))
    if as_json:
        print(json.dumps(to_jsonable(rows), indent=2))
        return
    print(table(["ID", "TYPE", "STATUS", "ATTEMPTS", "CAPABILITY", "PROGRESS", "CREATED"],
                [[r["id"], r["type"], r["status"], f"{r['attempts']}/{r['max_attempts']}",
                  r["capability"], None if r["progress"] is None else f"{r['progress']}%",
                  f"{r['created_at']:%Y-%m-%d %H:%M:%S}"] for r in rows], empty="no jobs"))


@app.command("show")
def show(job_id: int, config_path: ConfigPath = DEFAULT_CONFIG,
         as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Show one job: args, status, attempts, progress, last error, timestamps, node."""
    row = _with_connection(config_path, lambda c: jobs.get_job(c, job_id))
    if row is None:
        fail(f"no job with id {job_id}", EXIT_FAILURE)
    if as_json:
        print(json.dumps(to_jsonable(row), indent=2))
        return
    for key in ("id", "type", "status", "capability", "priority", "node_id", "created_at",
                "run_at", "started_at", "completed_at"):
        print(f"{key + ':':<15}{'-' if row[key] is None else row[key]}")
    print(f"{'attempts:':<15}{row['attempts']}/{row['max_attempts']}")
    progress = "-" if row["progress"] is None else f"{row['progress']}%"
    if row["progress_message"]:
        progress += f" ({row['progress_message']})"
    print(f"{'progress:':<15}{progress}")
    print(f"{'args:':<15}{json.dumps(row['args'])}")
    print(f"{'result:':<15}{json.dumps(row['result'])}")
    if row["last_error"]:
        print("last error:")
        print("  " + row["last_error"].replace("\n", "\n  "))


@app.command("retry")
def retry(job_id: int, config_path: ConfigPath = DEFAULT_CONFIG) -> None:
    """Put a dead or cancelled job back to pending, with its attempts reset."""
    if not _with_connection(config_path, lambda c: jobs.retry_dead_job(c, job_id)):
        fail(f"job {job_id} does not exist or is not dead or cancelled", EXIT_FAILURE)
    print(f"job {job_id} is pending again")


@app.command("cancel")
def cancel(job_id: int, config_path: ConfigPath = DEFAULT_CONFIG) -> None:
    """Cancel a pending job at once; ask a running one to stop."""
    status = _with_connection(config_path, lambda c: jobs.cancel_job(c, job_id))
    if status is None:
        fail(f"job {job_id} does not exist or has already finished", EXIT_FAILURE)
    if status == "cancelled":
        print(f"job {job_id} cancelled")
    else:
        print(f"job {job_id} is running: asked it to stop (ctx.cancel_requested() is now true)")


@app.command("enqueue")
def enqueue(
    name: str,
    config_path: ConfigPath = DEFAULT_CONFIG,
    args: str = typer.Option("{}", "--args", help="The job's args, a JSON object."),
    delay_secs: float | None = typer.Option(None, "--delay-secs", min=0),
    priority: int | None = typer.Option(None, "--priority"),
    idempotency_key: str | None = typer.Option(None, "--idempotency-key"),
) -> None:
    """Enqueue a job of the app by name."""
    config = load_config(config_path)
    try:
        parsed = json.loads(args)
    except ValueError as exc:
        fail(f"--args is not valid JSON: {exc}", EXIT_USAGE)
    if not isinstance(parsed, dict):
        fail("--args must be a JSON object", EXIT_USAGE)
    try:
        load_app(config.root, config.project.app)
        jobs.job_spec(name)
    except (AppLoadError, jobs.UnknownJobError) as exc:
        fail(exc, EXIT_USAGE)
    job_id = with_connection(config, "jobs", lambda c: jobs.enqueue(
        c, name, parsed, delay_secs=delay_secs, priority=priority,
        idempotency_key=idempotency_key))
    print(job_id)
