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

Key, Name, Text and EpochUs are the contract's (plant/fields.py): the agents' requests use them too.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from annotated_types import Ge, Le
from pydantic import AwareDatetime, GetCoreSchemaHandler, StringConstraints
from pydantic_core import PydanticCustomError, core_schema

from plant.fields import EARLIEST, LATEST, LINE, LINES, EpochUs, Key, Name, Text

__all__ = ["EpochUs", "Key", "Name", "Offset", "Reason", "RowId", "Text", "Timestamp", "Token", "UrlText"]

MAX_ROW_ID = 2**31 - 1
REASON_LENGTH = 2_000
URL_LENGTH = 2_048
TOKEN_LENGTH = 512


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


Reason = Annotated[str, StringConstraints(max_length=REASON_LENGTH), LINES]
UrlText = Annotated[str, StringConstraints(min_length=1, max_length=URL_LENGTH), LINE]
Token = Annotated[str, StringConstraints(max_length=TOKEN_LENGTH), LINE]
RowId = Annotated[int, Ge(1), Le(MAX_ROW_ID)]
Offset = Annotated[int, Ge(0), Le(MAX_ROW_ID)]
Timestamp = Annotated[AwareDatetime, _TimestampRange()]
