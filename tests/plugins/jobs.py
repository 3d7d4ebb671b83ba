"""Helpers for tests of the worker: a job app, and waiting on job states in the database."""

from __future__ import annotations

import time

import psycopg

EXECUTIONS = {"0001_executions.sql": """
    CREATE TABLE executions (
        job_key     text        NOT NULL,
        attempt     integer     NOT NULL,
        worker_pid  integer     NOT NULL,
        at          timestamptz NOT NULL DEFAULT clock_timestamp(),
        UNIQUE (job_key, attempt)
    );
"""}

JOBS_MODULE = '''
import asyncio
import os
import time

import forge_node as forge


def record(ctx, args):
    ctx.db.execute("INSERT INTO executions (job_key, attempt, worker_pid) VALUES (%s, %s, %s)",
                   [args["key"], ctx.attempt, os.getpid()])
    ctx.db.commit()


@forge.job
def once(ctx, args):
    record(ctx, args)


@forge.job(worker_capability="gpu")
def gpu_work(ctx, args):
    record(ctx, args)
    time.sleep(args.get("secs", 1))


@forge.job
def general_work(ctx, args):
    record(ctx, args)


@forge.job(max_attempts=3, backoff=forge.Backoff(base=0.3, factor=2, jitter=0))
def flaky(ctx, args):
    record(ctx, args)
    raise ValueError("flaky says no")


@forge.job(max_attempts=3, backoff=forge.Backoff(base=0.1, factor=1, jitter=0))
def permanent(ctx, args):
    record(ctx, args)
    raise forge.PermanentError("this will never work")


@forge.job(timeout_secs=0.5, max_attempts=1)
def too_slow(ctx, args):
    record(ctx, args)
    time.sleep(30)


@forge.job
def sleeper(ctx, args):
    record(ctx, args)
    time.sleep(args.get("secs", 1))
    return {"slept": args.get("secs", 1)}


@forge.job
def slower_each_attempt(ctx, args):
    record(ctx, args)
    time.sleep(args["secs"][ctx.attempt - 1])
    return {"attempt": ctx.attempt}


@forge.job
def until_cancelled(ctx, args):
    record(ctx, args)
    ctx.progress(10, "started")
    deadline = time.monotonic() + 30
    while not ctx.cancel_requested() and time.monotonic() < deadline:
        time.sleep(0.05)
    return "stopped"


@forge.job
async def async_double(ctx, args):
    await asyncio.sleep(0.01)
    ctx.progress(50, "half way")
    return {"double": args["n"] * 2}


@forge.job
def spawner(ctx, args):
    ctx.enqueue("once", {"key": args["key"] + "-child"})
    if args.get("fail"):
        raise RuntimeError("roll back my child")


@forge.mutation(public=True)
def order(ctx, args):
    ctx.enqueue("once", {"key": args["key"]})
    if args.get("fail"):
        raise forge.Error("REJECTED", "no order today", 422)
    return "ordered"
'''


def job_status(db: psycopg.Connection, job_id: int) -> str | None:
    row = db.execute("SELECT status FROM forge_jobs WHERE id = %s", [job_id]).fetchone()
    return row and row[0]


def wait_for_jobs(db: psycopg.Connection, ids: list[int], status: str = "completed",
                  timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = db.execute("SELECT count(*) FROM forge_jobs WHERE id = ANY(%s) AND status = %s",
                           [ids, status]).fetchone()[0]
        if count == len(ids):
            return
        time.sleep(0.05)
    states = db.execute("SELECT status, count(*) FROM forge_jobs WHERE id = ANY(%s) "
                        "GROUP BY 1", [ids]).fetchall()
    raise AssertionError(f"jobs not all {status} within {timeout}s: {states}")


def executions(db: psycopg.Connection, key_prefix: str = "") -> list[tuple]:
    return db.execute("SELECT job_key, attempt, worker_pid, at FROM executions "
                      "WHERE job_key LIKE %s ORDER BY at", [key_prefix + "%"]).fetchall()
