"""`db.query` spans: one per SQL statement that a function or a job runs, with
`[observability] db_spans = true` and traces exported.

Functions' and jobs' connections then get a cursor class from `cursor_classes`, which wraps
`execute` in a span of forge-node's own (spans.SpanFactory), a child of the current span:
the function's, the job's, or one the app opened. Its attributes follow the database
semantic conventions: `db.system.name`, `db.query.text` with its literals replaced by `?`
(values never reach the collector), `db.operation.name`, `db.response.returned_rows` for a
statement that returns rows, and on failure `error.type` and `db.response.status_code`
(the SQLSTATE). Outside a sampled trace a statement records nothing. With db_spans off the
connections keep their plain cursors: the option costs nothing then.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import psycopg
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from .. import db
from .spans import SpanFactory

_LITERALS = re.compile(r"""
      '(?:[^']|'')*'                          # a string ('' escapes; an E or U& prefix stays)
    | \$(?P<tag>[A-Za-z_]\w*)?\$.*?\$(?P=tag)?\$  # a dollar-quoted string
    | (?<![\w$])\d+(?:\.\d*)?(?:[eE][-+]?\d+)?  # a number, not the digits of a name
    """, re.S | re.X)
_LEADING_COMMENTS = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.S)
_MAX_REMEMBERED = 1024


class Statement(NamedTuple):
    text: str  # without its literals
    operation: str  # its first keyword: SELECT, INSERT, WITH...


_statements: dict[str, Statement] = {}  # an app runs its few statements again and again


def statement(query: str) -> Statement:
    """The query's text without literals, and its operation; remembered."""
    known = _statements.get(query)
    if known is None:
        text = _LITERALS.sub("?", query).strip()
        words = text[_LEADING_COMMENTS.match(text).end():].split(None, 1)
        known = Statement(text, words[0].upper() if words else "")
        if len(_statements) < _MAX_REMEMBERED:
            _statements[query] = known
    return known


def cursor_classes(spans: SpanFactory) -> tuple[type[db.CountingCursor],
                                                type[db.AsyncCountingCursor]]:
    """The cursors of functions' and jobs' connections that record their statements."""
    return (type("TracingCursor", (TracingCursor,), {"spans": spans}),
            type("AsyncTracingCursor", (AsyncTracingCursor,), {"spans": spans}))


class TracingCursor(db.CountingCursor):
    spans: SpanFactory  # set on the subclass cursor_classes makes

    def execute(self, query: Any, *args: Any, **kwargs: Any) -> TracingCursor:
        span = _start(self.spans, query, self)
        if span is None:
            return super().execute(query, *args, **kwargs)
        try:
            result = super().execute(query, *args, **kwargs)
        except BaseException as exc:
            _failed(span, exc)
            raise
        _finished(span, self)
        return result


class AsyncTracingCursor(db.AsyncCountingCursor):
    spans: SpanFactory  # set on the subclass cursor_classes makes

    async def execute(self, query: Any, *args: Any, **kwargs: Any) -> AsyncTracingCursor:
        span = _start(self.spans, query, self)
        if span is None:
            return await super().execute(query, *args, **kwargs)
        try:
            result = await super().execute(query, *args, **kwargs)
        except BaseException as exc:
            _failed(span, exc)
            raise
        _finished(span, self)
        return result


def _start(spans: SpanFactory, query: Any,
           cursor: psycopg.Cursor | psycopg.AsyncCursor) -> trace.Span | None:
    """A recorded db.query span under the current one, or None outside a sampled trace and
    for the pool's empty liveness check."""
    parent = trace.get_current_span().get_span_context()
    if not parent.trace_flags.sampled or not query:
        return None
    if not isinstance(query, str):
        query = query.decode() if isinstance(query, bytes) else query.as_string(cursor)
    text, operation = statement(query)
    return spans.start("db.query", parent, SpanKind.CLIENT, {
        "db.system.name": "postgresql", "db.operation.name": operation,
        "db.query.text": text})


def _finished(span: trace.Span, cursor: psycopg.Cursor | psycopg.AsyncCursor) -> None:
    if cursor.description is not None:  # the statement returns rows
        span.set_attribute("db.response.returned_rows", cursor.rowcount)
    span.end()


def _failed(span: trace.Span, exc: BaseException) -> None:
    span.set_attribute("error.type", type(exc).__qualname__)
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        span.set_attribute("db.response.status_code", sqlstate)
    span.set_status(StatusCode.ERROR, str(exc).splitlines()[0] if str(exc) else None)
    span.end()
