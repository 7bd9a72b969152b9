"""The base of every API schema: a request with a field the API does not know is refused, not ignored."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")
