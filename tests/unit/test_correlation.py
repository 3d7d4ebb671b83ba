"""Request ids: a sane client id is kept; otherwise a new random UUID (version 4)."""

from __future__ import annotations

import uuid

from forge_node.http.correlation import new_request_id, request_id_from


def test_new_request_ids_are_random_version_4_uuids():
    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_a_sane_client_id_is_kept_and_anything_else_replaced():
    assert request_id_from("client-123.abc") == "client-123.abc"
    for bad in (None, "", "has spaces", "x" * 129, "semi;colon"):
        assert uuid.UUID(request_id_from(bad)).version == 4
