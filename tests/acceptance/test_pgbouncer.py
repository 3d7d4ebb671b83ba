"""Whole nodes through a real PgBouncer in transaction mode: `[database] url` through the
pooler for functions, job claims and completions and jobs' own work, `direct_url` for session
work (migrations, leader locks, LISTEN, the registry)."""

from __future__ import annotations

import psycopg

from tests.acceptance.test_live import SseStream, subscribe
from tests.plugins.calls import rpc_call, rpc_data
from tests.plugins.jobs import wait_for_jobs
from tests.plugins.nodes import forge_cli, node_env, wait_until

MODULE = '''
import forge_node as forge


@forge.query(public=True, live=["notes"])
def notes(ctx, args):
    return ctx.db.execute("SELECT id, body FROM notes ORDER BY id").fetchall()


@forge.query(public=True)
async def count(ctx, args):
    cursor = await ctx.db.execute("SELECT count(*) AS n FROM notes")
    return (await cursor.fetchone()).n


@forge.mutation(public=True)
def add_note(ctx, args):
    row = ctx.db.execute("INSERT INTO notes (body) VALUES (%s) RETURNING id",
                         [args["body"]]).fetchone()
    ctx.enqueue("mark", {"id": row.id})
    if args.get("fail"):
        raise forge.Error("REJECTED", "rolled back, and its job with it", 422)
    return row.id


@forge.job
def mark(ctx, args):
    ctx.db.execute("UPDATE notes SET marked = true WHERE id = %s", [args["id"]])
'''

MIGRATIONS = {"0001_notes.sql": "CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL,"
                                " marked boolean NOT NULL DEFAULT false);"}


def pooled_app(make_app, pgbouncer, roles=("gateway", "function", "worker", "scheduler")):
    return make_app(module=MODULE, migrations=MIGRATIONS, node={"roles": list(roles)},
                    database={"direct_url": pgbouncer.direct_url})


def test_a_node_works_through_pgbouncer_in_transaction_mode(make_app, start_node, pgbouncer,
                                                            db):
    app = pooled_app(make_app, pgbouncer)
    node = start_node(app, pgbouncer.url).wait_ready()
    stream = SseStream(app.port)
    try:
        assert subscribe(app.port, stream.session_id(), "all")[0] == 200  # LISTEN: direct
        assert stream.next().data == {"id": "all", "data": []}
        ids = [rpc_data(app.port, "add_note", {"body": f"note {i}"}) for i in range(12)]
        assert rpc_call(app.port, "add_note", {"body": "no", "fail": True})[0] == 422
        update = stream.next()  # live wake-ups: the change log read through the pooler
        assert update.data["id"] == "all" and update.data["data"]
        for _ in range(12):  # past psycopg's prepare threshold (5): nothing prepared
            assert rpc_data(app.port, "count", {}) == 12
        wait_for_jobs(db, db.execute("SELECT array_agg(id) FROM forge_jobs").fetchone()[0])
        assert db.execute("SELECT count(*) FROM notes WHERE marked").fetchone()[0] == 12
        assert db.execute("SELECT count(*) FROM forge_jobs").fetchone()[0] == len(ids)
    finally:
        stream.close()
    assert node.proc.poll() is None


def session_work_is_direct(db, direct_url: str) -> bool:
    """Every LISTEN and advisory lock of forge-node is held on a direct session: PgBouncer's
    own sessions connect from 127.0.0.1 through its pool, forge-node's direct ones over the
    socket, with forge-node's application_name."""
    rows = db.execute(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
        "WHERE l.locktype = 'advisory' AND l.granted").fetchall()
    return bool(rows) and all(name.startswith("forge-node") for (name,) in rows)


def test_the_scheduler_leader_fails_over_through_pgbouncer(make_app, start_node, pgbouncer,
                                                           db):
    first = start_node(pooled_app(make_app, pgbouncer, ["scheduler"]), pgbouncer.url)
    first.wait_ready()
    second = start_node(pooled_app(make_app, pgbouncer, ["scheduler"]), pgbouncer.url)
    second.wait_ready()

    def leader():
        row = db.execute("SELECT node_id FROM forge_leaders WHERE role = 'scheduler'").fetchone()
        return row and row[0]

    wait_until(lambda: leader() is not None, message="a leader")
    assert session_work_is_direct(db, pgbouncer.direct_url)
    old = leader()
    leading = next(n for n in (first, second)
                   if db.execute("SELECT count(*) FROM forge_nodes WHERE id = %s AND pid = %s",
                                 [old, n.proc.pid]).fetchone()[0])
    leading.kill_tree()
    wait_until(lambda: leader() not in (None, old), timeout=15, message="the other leads")


def test_check_says_which_connections_go_where(make_app, pgbouncer):
    app = pooled_app(make_app, pgbouncer)
    result = forge_cli("check", "--config", str(app.config_path), env=node_env(pgbouncer.url))
    assert result.returncode == 0, result.stderr
    assert "through postgresql://postgres@127.0.0.1" in result.stdout
    assert "go direct to postgresql://" in result.stdout
    with psycopg.connect(pgbouncer.url) as conn:  # the pooler really is in the way
        conn.execute("SELECT 1")
