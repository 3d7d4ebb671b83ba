"""The live queries' change triggers follow the app's declarations at start, and the change
log they write tells each reader every table written since its last read."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from forge_node import live
from forge_node.app import AppRegistry, FunctionSpec
from forge_node.errors import AppLoadError
from forge_node.live import sync_triggers
from forge_node.migrations import Migrator, internal_migrations
from forge_node.services.livechanges import LiveChangesPruner


def registry_reading(*tables: str) -> AppRegistry:
    registry = AppRegistry()
    registry.add_function(FunctionSpec("watch", "query", lambda ctx, args: None, True, (),
                                       None, tables))
    return registry


def triggered(db) -> set[str]:
    return {row[0] for row in db.execute(
        "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE t.tgname = 'forge_live_change'")}


@pytest.fixture
def tables(database_url, db):
    Migrator(database_url, internal_migrations()).up()
    db.execute("CREATE TABLE notes (id int); CREATE TABLE tags (id int)")


def sync(database_url, registry):
    with psycopg.connect(database_url, autocommit=True) as conn:
        sync_triggers(conn, registry)


def test_declared_tables_get_the_trigger_and_undeclared_ones_lose_it(database_url, db, tables):
    sync(database_url, registry_reading("notes", "tags"))
    assert triggered(db) == {"notes", "tags"}
    sync(database_url, registry_reading("notes"))
    assert triggered(db) == {"notes"}
    db.execute("INSERT INTO notes VALUES (1), (2)")  # one statement: one change
    db.execute("INSERT INTO tags VALUES (1)")
    oid = db.execute("SELECT 'notes'::regclass::oid").fetchone()[0]
    assert db.execute("SELECT relid FROM forge_live_changes").fetchall() == [(oid,)]


def test_a_declared_table_that_does_not_exist_stops_the_start(database_url, tables):
    with pytest.raises(AppLoadError, match="live query watch reads table 'nonesuch'"):
        sync(database_url, registry_reading("nonesuch"))


def changes_since(database_url, since):
    async def read():
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            return await live.changes_since(conn, since)
    return asyncio.run(read())


def test_a_read_of_the_log_names_every_table_committed_since_the_last_one(database_url, db,
                                                                          tables):
    sync(database_url, registry_reading("notes", "tags"))
    notes, tags = (db.execute(f"SELECT '{t}'::regclass::oid").fetchone()[0]
                   for t in ("notes", "tags"))
    first = changes_since(database_url, None)
    assert first.tables == []
    with psycopg.connect(database_url) as late:  # began before the next read, commits after
        late.execute("INSERT INTO tags VALUES (1)")
        db.execute("INSERT INTO notes VALUES (1)")
        second = changes_since(database_url, first.snapshot)
        assert second.tables == [notes]
        late.commit()
    third = changes_since(database_url, second.snapshot)
    assert third.tables == [tags]
    assert changes_since(database_url, third.snapshot).tables == []
    assert third.server_started == first.server_started


def test_pruning_deletes_only_the_changes_committed_before_the_previous_run(database_url, db,
                                                                              tables):
    sync(database_url, registry_reading("notes"))
    pruner = LiveChangesPruner()
    db.execute("INSERT INTO notes VALUES (1)")
    assert pruner.run_once(db) == 0  # the first run only takes a snapshot
    db.execute("INSERT INTO notes VALUES (2)")
    assert pruner.run_once(db) == 1
    assert db.execute("SELECT count(*) FROM forge_live_changes").fetchone()[0] == 1
