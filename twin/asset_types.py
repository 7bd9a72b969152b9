"""The site's asset types as the twin holds them: what people look at on each kind of asset.

Key signals, alarm and rate limits and writable properties per type, as synchronised from the site file
(twin/site_sync.py), one ``AssetTypeRecord`` a type.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from twin.db import get_or_missing
from twin.tables import AssetTypeRecord


def all_types(session: Session) -> list[AssetTypeRecord]:
    """Every asset type of the site, by id."""
    return list(session.scalars(select(AssetTypeRecord).order_by(AssetTypeRecord.id)))


def get_type(session: Session, type_id: str) -> AssetTypeRecord:
    """One asset type; NotFound if the site has none of that id."""
    return get_or_missing(session, AssetTypeRecord, type_id, f"no asset type {type_id!r}")
