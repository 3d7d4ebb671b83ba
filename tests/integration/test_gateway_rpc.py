"""POST /_api/rpc/{name}: results, transactions, and every error code."""

from __future__ import annotations

import logging

import pytest

from tests.plugins.gateway import bearer, error_of, hs256_token

NOTES = {"0001_notes.sql": """
    CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL,
                        price numeric(10, 2), uid uuid DEFAULT gen_random_uuid(),
                        created_at timestamptz NOT NULL DEFAULT now());
"""}

MODULE = '''
import time
import forge_node as forge


@forge.query(public=True)
def list_notes(ctx, args):
    return ctx.db.execute(
        "SELECT id, body, price, uid, created_at FROM notes ORDER BY id").fetchall()


@forge.mutation(public=True)
def add_note(ctx, args):
    row = ctx.db.execute("INSERT INTO notes (body, price) VALUES (%s, %s) RETURNING id",
                         [args["body"], args.get("price")]).fetchone()
    if args.get("fail_after_insert"):
        raise RuntimeError("secret internal detail")
    return {"id": row[0], "same": row.id}


@forge.query(public=True)
def write_in_query(ctx, args):
    ctx.db.execute("INSERT INTO notes (body) VALUES ('x')")


@forge.query(public=True)
async def write_in_async_query(ctx, args):
    await ctx.db.execute("INSERT INTO notes (body) VALUES ('x')")


@forge.mutation(public=True)
def conflict(ctx, args):
    raise forge.Error("CONFLICT", "that name is taken", 409)


@forge.query(public=True, timeout_secs=0.5)
def slow_sql(ctx, args):
    ctx.db.execute("SELECT pg_sleep(5)")


@forge.query(public=True, timeout_secs=0.5)
def slow_python(ctx, args):
    time.sleep(1.0)
    return "late"


@forge.query
def whoami(ctx, args):
    return {"sub": ctx.auth["sub"], "request_id": ctx.request_id}


@forge.mutation(roles=["admin"])
def admin_only(ctx, args):
    return "ok"


@forge.query(public=True)
def echo(ctx, args):
    return args
'''


@pytest.fixture
def gw(gateway):
    return gateway(MODULE, migrations=NOTES)


def test_a_mutation_commits_and_a_query_reads_rows_as_objects(gw):
    added = gw.rpc("add_note", {"body": "hello", "price": "12.50"})
    assert added.status_code == 200
    assert added.json["success"] is True and added.json["data"] == {"id": 1, "same": 1}
    assert added.json["request_id"] == added.headers["x-request-id"]
    [row] = gw.rpc("list_notes").json["data"]
    assert row["id"] == 1 and row["body"] == "hello"
    assert row["price"] == "12.50"  # Decimal: exact, as a string
    assert len(row["uid"]) == 36 and "T" in row["created_at"]


def test_args_default_to_an_empty_object(gw):
    assert gw.client.simulate_post("/_api/rpc/echo").json["data"] == {}
    assert gw.rpc("echo", {"a": [1, {"b": None}]}).json["data"] == {"a": [1, {"b": None}]}


def test_a_mutation_that_raises_is_rolled_back_and_its_error_is_not_leaked(gw, caplog):
    with caplog.at_level(logging.ERROR):
        result = gw.rpc("add_note", {"body": "doomed", "fail_after_insert": True})
    assert error_of(result) == (500, "INTERNAL_ERROR")
    assert "secret internal detail" not in result.text
    assert gw.rpc("list_notes").json["data"] == []
    logged = [r for r in caplog.records if getattr(r, "event", "") == "http.internal_error"]
    assert logged and logged[0].request_id == result.json["request_id"]
    assert "secret internal detail" in caplog.text


@pytest.mark.parametrize("name", ["write_in_query", "write_in_async_query"])
def test_a_write_in_a_query_is_refused_with_its_own_code(gw, name):
    result = gw.rpc(name)
    assert error_of(result) == (500, "READ_ONLY")
    message = result.json["error"]["message"]
    assert name in message and "read-only" in message and "mutation" in message
    assert gw.rpc("list_notes").json["data"] == []


def test_a_function_error_keeps_its_code_and_status(gw):
    result = gw.rpc("conflict")
    assert error_of(result) == (409, "CONFLICT")
    assert result.json["error"]["message"] == "that name is taken"


def test_unknown_function_is_not_found(gw):
    assert error_of(gw.rpc("nope")) == (404, "NOT_FOUND")


@pytest.mark.parametrize("body", [b"{not json", b'"a string"', b"[1, 2]", b'{"args": [1]}',
                                  b'{"args": "x"}'])
def test_malformed_bodies_are_invalid_arguments(gw, body):
    result = gw.client.simulate_post("/_api/rpc/echo", body=body,
                                     headers={"content-type": "application/json"})
    assert error_of(result) == (400, "INVALID_ARGUMENT")


def test_a_body_over_the_limit_is_payload_too_large(gateway):
    gw = gateway(MODULE, migrations=NOTES, gateway={"max_body_bytes": 100})
    result = gw.rpc("echo", {"x": "y" * 200})
    assert error_of(result) == (413, "PAYLOAD_TOO_LARGE")
    assert gw.rpc("echo", {"x": "y"}).status_code == 200


def test_other_methods_are_not_allowed(gw):
    for method in ("GET", "PUT", "DELETE"):
        result = gw.client.simulate_request(method, "/_api/rpc/echo")
        assert error_of(result) == (405, "METHOD_NOT_ALLOWED")


@pytest.mark.parametrize("name", ["slow_sql", "slow_python"])
def test_a_function_over_its_timeout_is_a_timeout(gw, name):
    result = gw.rpc(name)
    assert error_of(result) == (504, "TIMEOUT")


def test_a_token_is_required_unless_public(gw):
    assert error_of(gw.rpc("whoami")) == (401, "UNAUTHORIZED")
    result = gw.rpc("whoami", headers=bearer(hs256_token({"sub": "ada"})))
    assert result.json["data"] == {"sub": "ada", "request_id": result.headers["x-request-id"]}


def test_a_missing_role_is_forbidden(gw):
    assert error_of(gw.rpc("admin_only", headers=bearer(hs256_token()))) == (403, "FORBIDDEN")
    admin = bearer(hs256_token({"roles": ["reader", "admin"]}))
    assert gw.rpc("admin_only", headers=admin).json["data"] == "ok"
    odd = bearer(hs256_token({"roles": [{"name": "admin"}, ["admin"]]}))
    assert error_of(gw.rpc("admin_only", headers=odd)) == (403, "FORBIDDEN")


def test_the_function_role_can_be_disabled(gateway):
    gw = gateway(MODULE, migrations=NOTES, node={"roles": ["gateway"]})
    assert error_of(gw.rpc("echo")) == (503, "FUNCTION_ROLE_DISABLED")
    assert gw.client.simulate_get("/_api/health").status_code == 200


def test_a_draining_gateway_is_not_ready(gw):
    assert gw.client.simulate_get("/_api/ready").json == {"ready": True, "database": True}
    gw.deps.drain.draining = True
    result = gw.client.simulate_get("/_api/ready")
    assert result.status_code == 503 and result.json == {"ready": False, "database": True}


def test_health_needs_no_database(gw):
    result = gw.client.simulate_get("/_api/health")
    assert result.json == {"status": "healthy", "version": "0.1.0"}


def test_unknown_api_routes_are_json_404s(gw):
    for path in ("/_api", "/_api/", "/_api/nope", "/_api/rpc"):
        assert error_of(gw.client.simulate_get(path)) == (404, "NOT_FOUND"), path
