"""Binary arrays packed at once: PostgreSQL reads the same values as from psycopg's own dump of the list."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.conftest import PG_ADMIN_URL
from twin.pg_arrays import Kind, PackedArray, pack, register

CASTS = {"int2": "smallint[]", "int4": "integer[]", "int8": "bigint[]", "float8": "float8[]", "text": "text[]"}

PACKED: list[tuple[Kind, list[Any]]] = [
    ("int2", [0, 1, -1, 2**15 - 1, -(2**15)]),
    ("int4", [7, 2**31 - 1, -(2**31)]),
    ("int8", [2**63 - 1, -(2**63), 0, 1_700_000_000_000_000]),
    ("float8", [0.0, -0.0, 1.5, -2.25e300, 5e-324, math.inf, -math.inf]),
    ("float8", [1, 2**53 + 1]),
    ("float8", [math.nan]),
    ("text", [None, None, None]),
    ("text", ["", ""]),
    ("text", ["clock_corrected,late"] * 3),
    ("text", ["é✓"] * 2),
    ("int4", []),
    ("text", []),
]
LEFT_TO_PSYCOPG: list[tuple[Kind, list[Any]]] = [
    ("float8", [1.0, None]),
    ("int8", [None]),
    ("int2", [2**15]),
    ("int8", [2**63]),
    ("int4", ["7"]),
    ("int8", [True, False]),
    ("int4", [1.0]),
    ("text", ["a", "b"]),
    ("text", [None, "a"]),
    ("text", [1, 1]),
]


@pytest.fixture
def conn() -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")) as c:
        register(c.adapters)
        yield c


def _same(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(
        (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
        or (x == y and (not isinstance(x, float) or math.copysign(1, x) == math.copysign(1, y)))
        for x, y in zip(a, b, strict=True))


@pytest.mark.postgres
@pytest.mark.parametrize(("kind", "values"), PACKED)
def test_packed_array_reads_as_the_list(conn: psycopg.Connection[Any], kind: Kind, values: list[Any]) -> None:
    packed = pack(values, kind)
    assert isinstance(packed, PackedArray)
    cast = CASTS[kind]
    row = conn.execute(f"SELECT %b::{cast}, %b::{cast}", [packed, values]).fetchone()
    assert row is not None
    assert _same(row[0], row[1])


@pytest.mark.parametrize(("kind", "values"), LEFT_TO_PSYCOPG)
def test_what_cannot_be_packed_is_left_to_psycopg(kind: Kind, values: list[Any]) -> None:
    assert pack(values, kind) is None
