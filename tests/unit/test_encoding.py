import datetime
import decimal
import enum
import uuid
from collections import namedtuple

import pytest

from forge_node.encoding import dumps, to_jsonable


class Color(enum.Enum):
    RED = "red"


def test_rows_become_objects_and_values_encode_sensibly():
    Row = namedtuple("Row", "id price at day uid raw wait color tags")
    row = Row(1, decimal.Decimal("12.50"), datetime.datetime(2026, 1, 2, 3, 4, 5,
                                                             tzinfo=datetime.UTC),
              datetime.date(2026, 1, 2), uuid.UUID(int=1), b"\x00\x01",
              datetime.timedelta(seconds=90), Color.RED, {"a"})
    assert to_jsonable([row]) == [{
        "id": 1, "price": "12.50", "at": "2026-01-02T03:04:05+00:00", "day": "2026-01-02",
        "uid": "00000000-0000-0000-0000-000000000001", "raw": "AAE=", "wait": 90.0,
        "color": "red", "tags": ["a"]}]
    assert to_jsonable((1, (2, 3))) == [1, [2, 3]]
    assert dumps({"ü": 1}) == '{"ü":1}'


def test_an_unencodable_value_is_a_clear_error():
    with pytest.raises(TypeError, match="a object cannot be encoded as JSON"):
        to_jsonable(object())
