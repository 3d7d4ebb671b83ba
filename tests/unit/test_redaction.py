"""The one redaction: passwords and URL queries masked wherever they sit in a text."""

from __future__ import annotations

import pytest

from forge_node.redaction import scrub, url_host


@pytest.mark.parametrize(("text", "expected"), [
    ("postgresql+psycopg://u:S3cret@h/db", "postgresql+psycopg://u:***@h/db"),
    ('could not connect to "postgresql://u:S3cret@[::1/db"',
     'could not connect to "postgresql://u:***@[::1/db"'),
    ("host=h password=S3cret dbname=x", "host=h password=*** dbname=x"),
    ("PASSWORD = 'a b\\'c' host=x", "PASSWORD = *** host=x"),
    ("GET https://keys.example/jwks.json?token=S3cret&x=1 failed",
     "GET https://keys.example/jwks.json?*** failed"),
    ("postgresql://u@h/db?password=S3cret", "postgresql://u@h/db?***"),
    ("nothing secret here", "nothing secret here"),
])
def test_scrub_masks_passwords_and_queries(text, expected):
    assert scrub(text) == expected


def test_url_host_keeps_only_the_host_and_port():
    assert url_host("https://u:p@keys.example:8443/jwks?token=t") == "keys.example:8443"
    assert url_host("https://[::1") == "?"
