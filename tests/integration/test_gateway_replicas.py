"""read_from_replica: queries read from a replica, mutations always write to the primary."""

from __future__ import annotations

import psycopg
import pytest

from tests.plugins.gateway import Gateway
from tests.plugins.nodes import wait_until

MODULE = '''
import forge_node as forge

@forge.query(public=True)
def where(ctx, args):
    return ctx.db.execute("SELECT name FROM whoami").fetchone()[0]

@forge.mutation(public=True)
def write(ctx, args):
    return ctx.db.execute("SELECT name FROM whoami").fetchone()[0]
'''

WHOAMI = {"0001_whoami.sql": "CREATE TABLE whoami (name text);\n"
                             "INSERT INTO whoami VALUES ('primary');\n"}


@pytest.fixture
def replica_url(pg_server):
    name = pg_server.create_database()
    url = pg_server.url_for(name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE whoami (name text); INSERT INTO whoami VALUES ('replica')")
    yield url
    pg_server.drop_database(name)


def test_queries_go_to_the_replica_and_mutations_to_the_primary(gateway, replica_url):
    gw = gateway(MODULE, migrations=WHOAMI,
                 database={"replica_urls": [replica_url], "read_from_replica": True})
    assert gw.rpc("where").json["data"] == "replica"
    assert gw.rpc("write").json["data"] == "primary"


def test_replicas_are_unused_unless_read_from_replica_is_on(gateway, replica_url):
    gw = gateway(MODULE, migrations=WHOAMI, database={"replica_urls": [replica_url]})
    assert gw.rpc("where").json["data"] == "primary"


def test_a_replica_that_is_down_is_skipped_and_used_again_when_back(gateway, own_postgres):
    name = own_postgres.create_database()
    url = own_postgres.url_for(name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE whoami (name text); INSERT INTO whoami VALUES ('replica')")
    gw = gateway(MODULE, migrations=WHOAMI,
                 database={"replica_urls": [url], "read_from_replica": True})
    assert gw.rpc("where").json["data"] == "replica"
    own_postgres.stop()
    try:
        wait_until(lambda: gw.rpc("where").json.get("data") == "primary", timeout=10,
                   message="queries fall back to the primary")
        answers = [gw.rpc("where") for _ in range(20)]
        assert [(a.status_code, a.json["data"]) for a in answers] == [(200, "primary")] * 20
    finally:
        own_postgres.start()
    wait_until(lambda: gw.rpc("where").json.get("data") == "replica", timeout=10,
               message="the replica is used again")


RECOVERY_MODULE = '''
import forge_node as forge

@forge.query(public=True)
def on_standby(ctx, args):
    return ctx.db.execute("SELECT pg_is_in_recovery()").fetchone()[0]

@forge.mutation(public=True)
def write(ctx, args):
    ctx.db.execute("INSERT INTO writes DEFAULT VALUES")
'''


def test_a_replica_that_lags_is_skipped_until_it_catches_up(make_app, streaming_replica):
    app = make_app(module=RECOVERY_MODULE,
                   migrations={"0001_writes.sql": "CREATE TABLE writes (id bigserial);\n"},
                   database={"replica_urls": [streaming_replica.url], "read_from_replica": True,
                             "replica_max_lag_secs": 1})
    gw = Gateway(app, streaming_replica.primary_url)
    try:
        wait_until(lambda: gw.rpc("on_standby").json["data"] is True, timeout=10,
                   message="queries read from the standby")
        streaming_replica.pause_replay()
        gw.rpc("write")  # WAL the standby receives and does not apply: it falls behind
        wait_until(lambda: gw.rpc("on_standby").json["data"] is False, timeout=10,
                   message="queries fall back to the primary")
        streaming_replica.resume_replay()
        wait_until(lambda: gw.rpc("on_standby").json["data"] is True, timeout=10,
                   message="the standby is used again once it caught up")
    finally:
        gw.close()
