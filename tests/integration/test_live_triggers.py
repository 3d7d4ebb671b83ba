"""The live queries' change triggers follow the app's declarations at start."""

from __future__ import annotations

import psycopg
import pytest

from forge_node.app import AppRegistry, FunctionSpec
from forge_node.errors import AppLoadError
from forge_node.live import sync_triggers
from forge_node.migrations import Migrator, internal_migrations


def registry_reading(*tables: str) -> AppRegistry:
    registry = AppRegistry()
    registry.add_function(FunctionSpec("watch", "query", lambda ctx, args: None, True, (),
                                       None, tables))
    return registry


def triggered(db) -> set[str]:
    return {row[0] for row in db.execute(
        "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE t.tgname = 'forge_live_notify'")}


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
    db.execute("LISTEN forge_live")
    db.execute("INSERT INTO notes VALUES (1), (2)")  # one statement: one notification
    db.execute("INSERT INTO tags VALUES (1)")
    oid = db.execute("SELECT 'notes'::regclass::oid").fetchone()[0]
    assert [n.payload for n in db.notifies(timeout=0.5)] == [str(oid)]


def test_a_declared_table_that_does_not_exist_stops_the_start(database_url, tables):
    with pytest.raises(AppLoadError, match="live query watch reads table 'nonesuch'"):
        sync(database_url, registry_reading("nonesuch"))
