"""The embedded database's URL, as `forge-node run` prints it, works when copied into psycopg
and psql."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess

import psycopg
import pytest

URL = re.compile(r"postgresql://\S+")


def printed_urls(node) -> list[str]:
    embedded = node.wait_for_event("node.embedded_database")
    starting = node.wait_for_event("node.starting")
    return [URL.search(embedded["message"]).group(0).rstrip(")"),
            URL.search(starting["message"]).group(0)]


def test_the_printed_embedded_url_works_in_psycopg_and_psql(make_app, start_node):
    app = make_app(database={"url": ""})
    node = start_node(app, None).wait_ready(timeout=120)
    try:
        urls = printed_urls(node)
        for url in urls:  # the node's own database: its row is there
            with psycopg.connect(url, connect_timeout=5) as conn:
                assert conn.execute("SELECT pid FROM forge_nodes").fetchall() == [(node.pid,)]
        if shutil.which("psql") is None:
            pytest.skip("psql is not installed: the URLs were checked with psycopg only")
        for url in urls:
            result = subprocess.run(["psql", url, "-tAc", "SELECT 1"], capture_output=True,
                                    text=True, timeout=15)
            assert (result.returncode, result.stdout.strip()) == (0, "1"), result.stderr
    finally:
        node.send(signal.SIGTERM)
        node.wait(30)
