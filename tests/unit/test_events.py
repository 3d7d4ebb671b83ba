"""Every log event is named once, in observability/events.py: each `"event": ...` logged
under src/ is a literal listed there (or a choice between such literals), and each name
listed there is logged somewhere."""

from __future__ import annotations

import ast
from pathlib import Path

import forge_node
from forge_node.observability.events import EVENTS

PACKAGE = Path(forge_node.__file__).parent


def logged_events() -> dict[str, list[str]]:
    """Event name -> where it is logged; a name that is not a literal fails the test."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Dict):
                continue
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "event":
                    where = f"{path.relative_to(PACKAGE)}:{node.lineno}"
                    for name in literal_names(value, where):
                        found.setdefault(name, []).append(where)
    return found


def literal_names(value: ast.expr, where: str) -> list[str]:
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        return [value.value]
    if isinstance(value, ast.IfExp):  # "replica.back" if usable else "replica.skipped"
        return literal_names(value.body, where) + literal_names(value.orelse, where)
    raise AssertionError(f"{where}: an event name built at run time ({ast.unparse(value)}): "
                         "an operator cannot grep for it")


def test_every_logged_event_is_listed_and_every_listed_event_is_logged():
    logged = logged_events()
    assert {name: where for name, where in logged.items() if name not in EVENTS} == {}
    assert set(EVENTS) - set(logged) == set(), "listed in events.py but never logged"


def test_a_built_event_name_fails_the_check():
    expression = ast.parse('f"{role}.database_lost"', mode="eval").body
    try:
        literal_names(expression, "here")
    except AssertionError as exc:
        assert "built at run time" in str(exc)
    else:
        raise AssertionError("an f-string event name passed")
