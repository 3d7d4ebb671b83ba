"""A db.query span's text keeps a statement's shape and loses its values."""

from __future__ import annotations

import pytest

from forge_node.observability.dbspans import Statement, statement


@pytest.mark.parametrize(("query", "expected"), [
    ("SELECT * FROM notes WHERE id = %s", Statement("SELECT * FROM notes WHERE id = %s",
                                                    "SELECT")),
    ("update t2 set body = 'it''s 5', n = n + 1.5e3 where tag = $x$a'b$x$",
     Statement("update t2 set body = ?, n = n + ? where tag = ?", "UPDATE")),
    ("-- find the card\n/* hot */ WITH c AS (SELECT 1) SELECT * FROM c",
     Statement("-- find the card\n/* hot */ WITH c AS (SELECT ?) SELECT * FROM c", "WITH")),
    ("SELECT E'\\n', col_1, $1 FROM t1", Statement("SELECT E?, col_1, $1 FROM t1", "SELECT")),
    ("", Statement("", "")),
])
def test_literals_are_removed_and_the_operation_named(query, expected):
    assert statement(query) == expected
