"""Named queries: each table's SQL lives in one `.sql` file beside the module that owns it.

A file holds blocks that start with `-- name: verb_noun` and run until the next name line:

    -- name: heartbeat_node
    UPDATE forge_nodes SET last_heartbeat = now() WHERE id = %(id)s RETURNING status;

`Queries` exposes them as attributes (`Q.heartbeat_node`), so a typo fails at the call site
and tests can check that every query is used and every use exists.
"""

from __future__ import annotations

import re
from pathlib import Path

_NAME_LINE = re.compile(r"^--\s*name:\s*([a-z][a-z0-9_]*)\s*$", re.MULTILINE)


class Queries:
    def __init__(self, queries: dict[str, str], source: Path) -> None:
        self._queries = queries
        self.source = source

    @classmethod
    def load(cls, module_file: str, filename: str) -> Queries:
        path = Path(module_file).with_name(filename)
        return cls(parse(path.read_text(encoding="utf-8")), path)

    def __getattr__(self, name: str) -> str:
        try:
            return self.__dict__["_queries"][name]
        except KeyError:
            raise AttributeError(f"{self.__dict__['source'].name} has no query named {name}") \
                from None

    def names(self) -> set[str]:
        return set(self._queries)


def parse(text: str) -> dict[str, str]:
    parts = _NAME_LINE.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name} is defined twice")
        queries[name] = body.strip()
    return queries
