"""API schemas of ``/api/v1/knowledge`` (the routes: twin/api/routes/advice.py)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from twin.fields import Key
from twin.knowledge.base import KnowledgeBody


class KnowledgeCreate(KnowledgeBody):
    """A new entry: the asset type and condition it is about, and what is known."""

    asset_type: Key
    condition: Annotated[Key, Field(description="a fault label, alert rule id or rule kind")]
