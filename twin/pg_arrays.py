"""PostgreSQL arrays in their binary wire form, built with numpy rather than element by element.

psycopg dumps a Python list as a binary array one element at a time in Python; the history writer
(``twin.bulk``) passes tens of thousands of elements a transaction, where that loop is a large share of the
ingest worker's CPU. ``pack(values, kind)`` builds the same bytes at once for the common columns: numbers with
no NULL, and text columns whose elements are all the same (all NULL, all empty). Anything else is left to
psycopg (``None`` from ``pack``): the bytes PostgreSQL receives are the same either way.

The binary array: ndim, has-NULL flag, element type oid, then per dimension its length and lower bound (1),
then each element as its byte length (-1 for NULL) followed by its bytes; all integers big-endian.
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar, Literal

import numpy as np
from psycopg.adapt import Dumper
from psycopg.pq import Format

Kind = Literal["int2", "int4", "int8", "float8", "text"]

# (array type oid, element type oid, numpy element type) per kind
_TYPES: dict[Kind, tuple[int, int, str]] = {
    "int2": (1005, 21, ">i2"),
    "int4": (1007, 23, ">i4"),
    "int8": (1016, 20, ">i8"),
    "float8": (1022, 701, ">f8"),
    "text": (1009, 25, ""),
}
_HEAD = struct.Struct("!iiiii")
_EMPTY = struct.Struct("!iii")
_LENGTH = struct.Struct("!i")
_NULL = _LENGTH.pack(-1)


class PackedArray(bytes):
    """The binary form of a PostgreSQL array; ``oid`` is its array type."""

    oid: ClassVar[int] = 0


class _PackedDumper(Dumper):
    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        return bytes(obj)


def _classes(kind: Kind) -> tuple[type[PackedArray], type[Dumper]]:
    oid = _TYPES[kind][0]
    array = type(f"Packed_{kind}", (PackedArray,), {"oid": oid})
    dumper = type(f"PackedDumper_{kind}", (_PackedDumper,), {"oid": oid})
    return array, dumper


_CLASSES = {kind: _classes(kind) for kind in _TYPES}


def register(adapters: Any) -> None:
    """Let a psycopg connection or cursor (its ``adapters``) pass ``PackedArray`` values as they are."""
    for array, dumper in _CLASSES.values():
        adapters.register_dumper(array, dumper)


def pack(values: list[Any], kind: Kind) -> PackedArray | None:
    """``values`` as a binary array of ``kind``, or None when psycopg should dump them: a NULL among numbers,
    anything but Python ints (and floats, for float8) or ints the type cannot hold, text elements that differ."""
    _oid, elem, dtype = _TYPES[kind]
    n = len(values)
    if n == 0:
        return _CLASSES[kind][0](_EMPTY.pack(0, 0, elem))
    if kind == "text":
        return _same_text(values, n, elem, kind)
    if None in values:
        return None
    numbers = np.asarray(values)
    if numbers.dtype.kind not in ("if" if kind == "float8" else "i"):  # bools, strings, ints beyond int64
        return None
    if kind in ("int2", "int4") and not _fits(numbers, dtype):
        return None
    body = np.empty(n, dtype=[("length", ">i4"), ("value", dtype)])
    body["length"] = np.dtype(dtype).itemsize
    body["value"] = numbers
    return _CLASSES[kind][0](_HEAD.pack(1, 0, elem, n, 1) + body.tobytes())


def _fits(numbers: Any, dtype: str) -> bool:
    bounds = np.iinfo(np.dtype(dtype))
    return bool(bounds.min <= numbers.min() and numbers.max() <= bounds.max)


def _same_text(values: list[Any], n: int, elem: int, kind: Kind) -> PackedArray | None:
    first = values[0]
    if values.count(first) != n or not (first is None or type(first) is str):
        return None
    item = _NULL if first is None else _LENGTH.pack(len(encoded := first.encode())) + encoded
    return _CLASSES[kind][0](_HEAD.pack(1, int(first is None), elem, n, 1) + item * n)
