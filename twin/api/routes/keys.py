"""``/api/v1/keys``: list, create and revoke API keys (admin only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, status

from plant.wire import from_us
from twin import auth
from twin.api.deps import SessionDep, require_role
from twin.auth import Role
from twin.fields import Token
from twin.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic, ApiKeysPublic
from twin.tables import ApiKey

router = APIRouter(prefix="/keys", tags=["keys"], dependencies=[Depends(require_role(Role.ADMIN))])


def _public(row: ApiKey) -> ApiKeyPublic:
    return ApiKeyPublic(
        prefix=row.prefix,
        name=row.name,
        role=Role(row.role),
        created_at=from_us(row.created_at),
        last_used_at=None if row.last_used_at is None else from_us(row.last_used_at),
        revoked=row.revoked,
    )


@router.get("", response_model=ApiKeysPublic)
def list_keys(session: SessionDep) -> ApiKeysPublic:
    """Every key, revoked ones included; never the keys themselves."""
    items = [_public(row) for row in auth.list_keys(session)]
    return ApiKeysPublic(items=items, count=len(items))


@router.post("", response_model=ApiKeyCreated, status_code=status.HTTP_201_CREATED)
def create_key(session: SessionDep, body: ApiKeyCreate) -> ApiKeyCreated:
    """A new key with the given role; the key is in this response only."""
    key = auth.create_key(session, body.role, body.name)
    row = auth.get_key(session, key)
    return ApiKeyCreated(**_public(row).model_dump(), key=key)


@router.delete("/{prefix}", response_model=ApiKeyPublic)
def revoke_key(session: SessionDep, prefix: Annotated[Token, Path(min_length=1, max_length=64)]) -> ApiKeyPublic:
    """Revoke a key: requests with it get 401 from now on."""
    return _public(auth.revoke_key(session, prefix))
