"""`async def` queries and mutations: the same transactions, read-only rule, enqueue and
timeouts as `def` functions, on an AsyncConnection."""

from __future__ import annotations

import pytest

from tests.plugins.gateway import error_of
from tests.plugins.nodes import wait_until

NOTES = {"0001_notes.sql": """
    CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL);
"""}

MODULE = '''
import asyncio
import forge_node as forge


@forge.query(public=True)
async def list_notes(ctx, args):
    cursor = await ctx.db.execute("SELECT id, body FROM notes ORDER BY id")
    return await cursor.fetchall()


@forge.mutation(public=True)
async def add_note(ctx, args):
    cursor = await ctx.db.execute("INSERT INTO notes (body) VALUES (%s) RETURNING id",
                                  [args["body"]])
    row = await cursor.fetchone()
    job_id = await ctx.enqueue("index_note", {"id": row.id})
    if args.get("fail_after_insert"):
        raise RuntimeError("secret internal detail")
    return {"id": row.id, "job_id": job_id}


@forge.mutation(public=True)
async def add_two(ctx, args):
    async with ctx.db.transaction():
        async with ctx.db.cursor() as cursor:
            await cursor.execute("INSERT INTO notes (body) VALUES ('one'), ('two')")
    return "ok"


@forge.job
def index_note(ctx, args):
    pass


@forge.query(public=True)
async def write_in_query(ctx, args):
    await ctx.db.execute("INSERT INTO notes (body) VALUES ('x')")


@forge.query(public=True, timeout_secs=0.5)
async def slow_sql(ctx, args):
    await ctx.db.execute("SELECT pg_sleep(30)")


@forge.query(public=True, timeout_secs=0.5)
def slow_sql_sync(ctx, args):
    ctx.db.execute("SELECT pg_sleep(30)")


@forge.query(public=True, timeout_secs=0.5)
async def slow_await(ctx, args):
    await asyncio.sleep(2)
    return "late"


@forge.query(public=True)
async def who(ctx, args):
    return {"request_id": ctx.request_id, "auth": ctx.auth}


@forge.mutation(public=True)
async def conflict(ctx, args):
    raise forge.Error("CONFLICT", "that name is taken", 409)
'''


@pytest.fixture
def gw(gateway):
    return gateway(MODULE, migrations=NOTES)


def jobs_of(db):
    return db.execute("SELECT type, args->>'id' FROM forge_jobs ORDER BY id").fetchall()


def test_an_async_mutation_commits_with_its_job_and_a_query_reads_rows(gw, db):
    added = gw.rpc("add_note", {"body": "hello"})
    assert added.status_code == 200
    assert added.json["data"]["id"] == 1
    assert gw.rpc("list_notes").json["data"] == [{"id": 1, "body": "hello"}]
    assert jobs_of(db) == [("index_note", "1")]


def test_an_async_mutation_that_raises_is_rolled_back_with_its_job(gw, db):
    result = gw.rpc("add_note", {"body": "doomed", "fail_after_insert": True})
    assert error_of(result) == (500, "INTERNAL_ERROR")
    assert "secret internal detail" not in result.text
    assert gw.rpc("list_notes").json["data"] == []
    assert jobs_of(db) == []


def test_cursors_and_savepoints_take_the_connection_too(gw):
    assert gw.rpc("add_two").json["data"] == "ok"
    assert [n["body"] for n in gw.rpc("list_notes").json["data"]] == ["one", "two"]


def test_an_async_query_runs_read_only(gw):
    assert error_of(gw.rpc("write_in_query")) == (500, "READ_ONLY")
    assert gw.rpc("list_notes").json["data"] == []


def test_an_async_function_sees_its_request(gw):
    result = gw.rpc("who")
    assert result.json["data"] == {"request_id": result.headers["x-request-id"], "auth": None}


def test_an_async_function_error_keeps_its_code(gw):
    assert error_of(gw.rpc("conflict")) == (409, "CONFLICT")


@pytest.mark.parametrize("name", ["slow_sql", "slow_sql_sync", "slow_await"])
def test_a_function_over_its_timeout_is_a_timeout_and_its_statement_ends(gw, db, name):
    assert error_of(gw.rpc(name)) == (504, "TIMEOUT")
    wait_until(lambda: not db.execute(
        "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%%pg_sleep(30)%%'"
        " AND pid <> pg_backend_pid()").fetchall(), timeout=5,
        message="the statement cancelled on the server")
