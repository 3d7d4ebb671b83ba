"""Every named query in a .sql file is used by its module, and every use names a real query."""

import re
from pathlib import Path

import pytest

import forge_node
from forge_node.sql import Queries, parse

PACKAGE = Path(forge_node.__file__).parent
# named-query files sit beside their modules; schema/ and the app template's migrations/ are
# migrations, not named queries
SQL_FILES = sorted(p for p in PACKAGE.rglob("*.sql")
                   if p.parent.name not in ("schema", "migrations"))


@pytest.mark.parametrize("sql_file", SQL_FILES, ids=lambda p: p.name)
def test_named_queries_and_their_uses_match(sql_file):
    module = sql_file.with_suffix(".py")
    defined = set(parse(sql_file.read_text()))
    used = set(re.findall(r"\bQ\.([a-z][a-z0-9_]*)\b", module.read_text()))
    assert defined - used == set(), f"unused queries in {sql_file.name}"
    assert used - defined == set(), f"{module.name} uses queries that do not exist"


def test_sql_files_exist():
    assert {p.name for p in SQL_FILES} >= {"cluster.sql", "migrations.sql"}


def test_an_unknown_query_name_fails_loudly():
    queries = Queries({"list_nodes": "SELECT 1"}, Path("cluster.sql"))
    with pytest.raises(AttributeError, match=r"cluster\.sql has no query named list_node"):
        queries.list_node  # noqa: B018


def test_a_query_defined_twice_is_an_error():
    with pytest.raises(ValueError, match="defined twice"):
        parse("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")
