"""Bounded field types of the contract: ids, names, free text and µs timestamps, as both sides check them.

Every string has a maximum length and refuses control characters (NUL among them: PostgreSQL cannot store
it) where they make no sense; free text keeps newlines and tabs. The limits are part of the JSON schema
(``maxLength``, ``pattern``, ``minimum``, ``maximum``), so the platform's OpenAPI document shows them.

    Key        ids from the site model: node, asset type, property, task, version, condition (64)
    Name       display names and short labels, one line (200)
    Text       comments, notes, descriptions (4,000)
    EpochUs    µs since the epoch, between 1970 and 2200
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from annotated_types import Ge, Le
from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler, StringConstraints
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

KEY_LENGTH = 64
NAME_LENGTH = 200
TEXT_LENGTH = 4_000
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


LINE = Printable()
LINES = Printable(multiline=True)
Key = Annotated[str, StringConstraints(min_length=1, max_length=KEY_LENGTH), LINE]
Name = Annotated[str, StringConstraints(max_length=NAME_LENGTH), LINE]
Text = Annotated[str, StringConstraints(max_length=TEXT_LENGTH), LINES]
EpochUs = Annotated[int, Ge(EARLIEST_US), Le(LATEST_US)]
