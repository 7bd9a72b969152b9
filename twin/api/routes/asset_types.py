"""``/api/v1/asset-types``: what the site model says people look at on each kind of asset (viewer and up).

Key signals (the trends an asset page opens on), alarm limits per property (HIHI, HI, LO, LOLO, drawn on the
charts) and rate limits, as synchronised from the site file (twin/site_sync.py; read by twin/asset_types.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from twin import asset_types
from twin.api.deps import SessionDep, require_role
from twin.auth import Role
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
    return [_public(r) for r in asset_types.all_types(session)]


@router.get("/{type_id}", response_model=AssetTypePublic)
def get_asset_type(session: SessionDep, type_id: Key) -> AssetTypePublic:
    """One asset type."""
    return _public(asset_types.get_type(session, type_id))
