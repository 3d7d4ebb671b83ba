"""Migrations against a real PostgreSQL: order, down, drift, failures and the lock."""

from __future__ import annotations

import threading

import psycopg
import pytest

from forge_node.errors import MigrationError
from forge_node.migrations import (
    MIGRATION_LOCK_KEY,
    Migrator,
    all_migrations,
    internal_migrations,
)
from tests.plugins.nodes import wait_until


@pytest.fixture
def app_root(tmp_path):
    (tmp_path / "migrations").mkdir()
    return tmp_path


def add(root, filename, text):
    (root / "migrations" / filename).write_text(text)


def migrator(url, root):
    return Migrator(url, all_migrations(root))


def recorded(db):
    return db.execute("SELECT source, version, name FROM forge_migrations "
                      "ORDER BY applied_at, source, version").fetchall()


def test_internal_migrations_run_first_then_the_app_in_order(database_url, db, app_root):
    add(app_root, "0002_second.sql", "ALTER TABLE first ADD COLUMN b int;")
    add(app_root, "0001_first.sql", "CREATE TABLE first (a int);")
    applied = migrator(database_url, app_root).up()
    internal = internal_migrations()
    assert [m.label for m in applied] == [*(m.label for m in internal),
                                          "migrations/0001_first.sql",
                                          "migrations/0002_second.sql"]
    assert recorded(db) == [*(("forge", m.version, m.name) for m in internal),
                            ("app", 1, "first"), ("app", 2, "second")]
    assert [m.name for m in internal][:2] == ["cluster", "jobs"]
    assert db.execute("SELECT a, b FROM first").fetchall() == []


def test_a_second_run_applies_nothing(database_url, db, app_root):
    add(app_root, "0001_first.sql", "CREATE TABLE first (a int);")
    migrator(database_url, app_root).up()
    assert migrator(database_url, app_root).up() == []
    add(app_root, "0002_more.sql", "CREATE TABLE more (a int);")
    assert [m.name for m in migrator(database_url, app_root).up()] == ["more"]


def test_down_runs_the_down_sections_newest_first(database_url, db, app_root):
    add(app_root, "0001_a.sql", "CREATE TABLE a (x int);\n-- @down\nDROP TABLE a;\n")
    add(app_root, "0002_b.sql", "CREATE TABLE b (x int);\n-- @down\nDROP TABLE b;\n")
    migrator(database_url, app_root).up()
    reverted = migrator(database_url, app_root).down(steps=2)
    assert [m.name for m in reverted] == ["b", "a"]
    assert db.execute("SELECT to_regclass('a'), to_regclass('b')").fetchone() == (None, None)
    assert {r[0] for r in recorded(db)} == {"forge"}
    assert migrator(database_url, app_root).down() == []  # internal ones are never reverted


def test_down_without_a_down_section_is_an_error(database_url, db, app_root):
    add(app_root, "0001_a.sql", "CREATE TABLE a (x int);\n")
    migrator(database_url, app_root).up()
    with pytest.raises(MigrationError, match=r"0001_a\.sql has no '-- @down' section"):
        migrator(database_url, app_root).down()
    assert db.execute("SELECT to_regclass('a') IS NOT NULL").fetchone()[0]


def test_a_changed_applied_file_is_drift_and_names_the_file(database_url, db, app_root):
    add(app_root, "0001_a.sql", "CREATE TABLE a (x int);\n")
    migrator(database_url, app_root).up()
    add(app_root, "0001_a.sql", "CREATE TABLE a (x int, y int);\n")
    add(app_root, "0002_b.sql", "CREATE TABLE b (x int);\n")
    with pytest.raises(MigrationError, match=r"migrations/0001_a\.sql was changed after it "
                                             r"was applied"):
        migrator(database_url, app_root).up()
    assert db.execute("SELECT to_regclass('b')").fetchone()[0] is None


def test_a_recorded_migration_unknown_to_the_code_is_drift(database_url, db, app_root):
    add(app_root, "0001_a.sql", "SELECT 1;\n")
    add(app_root, "0002_b.sql", "SELECT 1;\n")
    migrator(database_url, app_root).up()
    (app_root / "migrations" / "0002_b.sql").unlink()
    with pytest.raises(MigrationError, match=r"app migration 0002_b applied, but this code "
                                             r"has no such file"):
        migrator(database_url, app_root).up()


def test_a_failing_migration_is_rolled_back_and_named(database_url, db, app_root):
    add(app_root, "0001_ok.sql", "CREATE TABLE ok (x int);\n")
    add(app_root, "0002_bad.sql", "CREATE TABLE half (x int);\nSELECT * FROM nowhere;\n")
    with pytest.raises(MigrationError, match=r'migrations/0002_bad.sql failed and was rolled '
                                             r'back: relation "nowhere" does not exist'):
        migrator(database_url, app_root).up()
    assert db.execute("SELECT to_regclass('ok') IS NOT NULL, to_regclass('half')").fetchone() \
        == (True, None)
    assert [r[1:] for r in recorded(db) if r[0] == "app"] == [(1, "ok")]


def test_status_reports_applied_pending_changed_and_unknown(database_url, db, app_root):
    add(app_root, "0001_a.sql", "SELECT 1;\n")
    add(app_root, "0002_b.sql", "SELECT 1;\n")
    migrator(database_url, app_root).up()
    add(app_root, "0001_a.sql", "SELECT 2;\n")
    (app_root / "migrations" / "0002_b.sql").unlink()
    add(app_root, "0003_c.sql", "SELECT 1;\n")
    states = {(s.source, s.version): s.state for s in migrator(database_url, app_root).status()}
    internal = {("forge", m.version): "applied" for m in internal_migrations()}
    assert states == {**internal, ("app", 1): "changed", ("app", 3): "pending",
                      ("app", 2): "unknown"}


def test_status_of_an_empty_database_lists_everything_pending(database_url, app_root):
    add(app_root, "0001_a.sql", "SELECT 1;\n")
    assert {s.state for s in migrator(database_url, app_root).status()} == {"pending"}


def test_a_run_waits_for_the_migration_lock(database_url, db, app_root):
    add(app_root, "0001_a.sql", "CREATE TABLE a (x int);\n")
    holder = psycopg.connect(database_url, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK_KEY])
    finished = threading.Event()
    thread = threading.Thread(target=lambda: (migrator(database_url, app_root).up(),
                                              finished.set()))
    thread.start()
    wait_until(lambda: db.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                  "AND NOT granted").fetchone()[0] == 1,
               message="the run waiting for the lock")
    assert not finished.is_set()
    assert db.execute("SELECT to_regclass('a')").fetchone()[0] is None
    holder.close()  # a holder's session ending frees the lock, as a crashed node's does
    thread.join(10)
    assert finished.is_set()
    assert db.execute("SELECT to_regclass('a') IS NOT NULL").fetchone()[0]
    lock_held = db.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
    assert lock_held.fetchone()[0] == 0
