"""`@forge.query(live=[...])`: the tables a live query reads, checked when the app loads."""

from __future__ import annotations

import pytest

import forge_node as forge
from forge_node import app as app_module
from forge_node.errors import AppLoadError
from forge_node.live import live_tables


@pytest.fixture
def registry():
    previous = app_module._current
    app_module._current = app_module.AppRegistry()
    try:
        yield app_module._current
    finally:
        app_module._current = previous


def test_live_queries_declare_the_tables_they_read(registry):
    @forge.query(public=True, live=["notes", "public.tags"])
    def notes(ctx, args):
        return []

    @forge.query(live=["notes"])
    def note_count(ctx, args):
        return 0

    assert registry.functions["notes"].live == ("notes", "public.tags")
    assert live_tables(registry) == {"notes": ["notes", "note_count"],
                                     "public.tags": ["notes"]}


@pytest.mark.parametrize(("decorator", "live", "message"), [
    (forge.mutation, ["notes"], "live applies to queries"),
    (forge.query, "notes", "live must be a list of table names"),
    (forge.query, ["notes", ""], "live must be a list of table names"),
])
def test_bad_live_declarations_fail_at_load(registry, decorator, live, message):
    with pytest.raises(AppLoadError, match=message):
        @decorator(live=live)
        def watched(ctx, args):
            return None
