"""``/api/v1/asset-types``: what the site model says people look at on each kind of asset (viewer and up).

Key signals (the trends an asset page opens on), alarm limits per property (HIHI, HI, LO, LOLO, drawn on the
charts) and rate limits, as synchronised from the site file (twin/site_sync.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from sqlalchemy import select

from twin.api.deps import SessionDep, require_role
from twin.auth import Role
from twin.errors import NotFound
from twin.fields import Key
from twin.schemas.asset_types import AssetTypePublic
from twin.tables import AssetTypeRecord

router = APIRouter(prefix="/asset-types", tags=["nodes"], dependencies=[Depends(require_role(Role.VIEWER))])


def _public(row: AssetTypeRecord) -> AssetTypePublic:
    spec: dict[str, Any] = row.spec or {}
    return AssetTypePublic(
        id=row.id,
        description=row.description,
        key_signals=spec.get("key_signals", []),
        models=spec.get("models", []),
        limits=spec.get("limits", {}),
        rates=spec.get("rates", {}),
        writable=spec.get("writable", {}),
    )


@router.get("", response_model=list[AssetTypePublic])
def list_asset_types(session: SessionDep) -> list[AssetTypePublic]:
    """Every asset type of the site."""
    return [_public(r) for r in session.scalars(select(AssetTypeRecord).order_by(AssetTypeRecord.id))]


@router.get("/{type_id}", response_model=AssetTypePublic)
def get_asset_type(session: SessionDep, type_id: Key) -> AssetTypePublic:
    """One asset type."""
    row = session.get(AssetTypeRecord, type_id)
    if row is None:
        raise NotFound(f"no asset type {type_id!r}")
    return _public(row)
