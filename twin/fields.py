"""Bounded field types for everything the API accepts: request bodies, path and query parameters.

Every string has a maximum length and refuses control characters (NUL among them: PostgreSQL cannot store
it) where they make no sense; free text keeps newlines and tabs. Every integer id is a database row id in
[1, 2**31 - 1]; every count, offset and timestamp has a range. A value outside is a 422 naming the field and
the reason, before any database session sees it. The limits are part of the OpenAPI document (``maxLength``,
``pattern``, ``minimum``, ``maximum``), so clients and fuzzers see them too.

    Key        ids from the site model: node, asset type, property, task, version, condition (64)
    Name       display names and short labels, one line (200)
    Reason     why an action was taken, may span lines (2,000)
    Text       comments, notes, descriptions (4,000)
    UrlText    a URL (2,048)
    Token      an opaque token from the API: a paging cursor, a key prefix (512)
    RowId      a database row id (alert, work order, subscription, delivery)
    Offset     a paging offset
    Timestamp  an ISO 8601 time with a timezone, between 1970 and 2200
    EpochUs    the same range as µs since the epoch
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from annotated_types import Ge, Le
from pydantic import AwareDatetime, GetCoreSchemaHandler, GetJsonSchemaHandler, StringConstraints
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

MAX_ROW_ID = 2**31 - 1
KEY_LENGTH = 64
NAME_LENGTH = 200
REASON_LENGTH = 2_000
TEXT_LENGTH = 4_000
URL_LENGTH = 2_048
TOKEN_LENGTH = 512
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
EARLIEST_US = 0
LATEST_US = int((LATEST - EARLIEST).total_seconds()) * 1_000_000


class Printable:
    """Refuses control characters (C0, DEL, C1); with ``multiline``, tab, newline and carriage return pass."""

    def __init__(self, *, multiline: bool = False) -> None:
        self.allowed = frozenset("\t\n\r") if multiline else frozenset()
        self.pattern = "^[^\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f]*$" if multiline else "^[^\\x00-\\x1f\\x7f]*$"

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        out = handler(schema)
        out["pattern"] = self.pattern
        return out

    def check(self, value: str) -> str:
        """``value`` unchanged, or a validation error naming the first control character and where it is."""
        for pos, char in enumerate(value):
            code = ord(char)
            if (code < 0x20 or 0x7F <= code < 0xA0) and char not in self.allowed:
                raise PydanticCustomError(
                    "control_character",
                    "must not contain control characters: U+{code} at position {pos}",
                    {"code": f"{code:04X}", "pos": pos},
                )
        return value


def _in_range(value: datetime) -> datetime:
    if not EARLIEST <= value < LATEST:
        raise PydanticCustomError(
            "timestamp_range", "must be between {earliest} and {latest}",
            {"earliest": EARLIEST.isoformat(), "latest": LATEST.isoformat()},
        )  # fmt: skip
    return value


class _TimestampRange:
    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(_in_range, handler(source))


_LINE = Printable()
_LINES = Printable(multiline=True)
Key = Annotated[str, StringConstraints(min_length=1, max_length=KEY_LENGTH), _LINE]
Name = Annotated[str, StringConstraints(max_length=NAME_LENGTH), _LINE]
Reason = Annotated[str, StringConstraints(max_length=REASON_LENGTH), _LINES]
Text = Annotated[str, StringConstraints(max_length=TEXT_LENGTH), _LINES]
UrlText = Annotated[str, StringConstraints(min_length=1, max_length=URL_LENGTH), _LINE]
Token = Annotated[str, StringConstraints(max_length=TOKEN_LENGTH), _LINE]
RowId = Annotated[int, Ge(1), Le(MAX_ROW_ID)]
Offset = Annotated[int, Ge(0), Le(MAX_ROW_ID)]
Timestamp = Annotated[AwareDatetime, _TimestampRange()]
EpochUs = Annotated[int, Ge(EARLIEST_US), Le(LATEST_US)]
