"""``/api/v1/keys``: list, create, rotate and revoke API keys (admin only), each change in the audit trail."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, status

from plant.wire import from_us, now_us
from twin import audit, auth, users
from twin.api.deps import AdminDep, SessionDep, SettingsDep
from twin.auth import Role
from twin.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic, ApiKeyRotate, ApiKeyRotated, ApiKeysPublic
from twin.tables import ApiKey

router = APIRouter(prefix="/keys", tags=["keys"])

Prefix = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$",
                             description="the key's prefix as listed (ftk_ and 12 hex digits)")]


def public(row: ApiKey) -> ApiKeyPublic:
    """A key as the API lists it."""
    return ApiKeyPublic(
        prefix=row.prefix,
        name=row.name,
        role=Role(row.role),
        created_at=from_us(row.created_at),
        last_used_at=None if row.last_used_at is None else from_us(row.last_used_at),
        revoked=row.revoked,
        expires_at=None if row.expires_at is None else from_us(row.expires_at),
        owner=row.owner,
        rotated_to=row.rotated_to,
        state=auth.key_state(row),
        sites=row.sites,
    )


def snapshot(row: ApiKey) -> dict[str, Any]:
    """A key as the audit trail records it (never its hash)."""
    return public(row).model_dump(mode="json", exclude={"last_used_at"})


@router.get("", response_model=ApiKeysPublic)
def list_keys(session: SessionDep, _who: AdminDep) -> ApiKeysPublic:
    """Every key, revoked ones included; never the keys themselves."""
    items = [public(row) for row in auth.list_keys(session)]
    return ApiKeysPublic(items=items, count=len(items))


@router.post("", response_model=ApiKeyCreated, status_code=status.HTTP_201_CREATED)
def create_key(session: SessionDep, who: AdminDep, body: ApiKeyCreate) -> ApiKeyCreated:
    """A new key with the given role (and expiry, and owner); the key is in this response only."""
    if body.owner is not None:
        users.get_user(session, body.owner)
    expires = None if body.expires_in_days is None else now_us() + int(body.expires_in_days * 86_400e6)
    key = auth.create_key(session, body.role, body.name, owner=body.owner, expires_at=expires, sites=body.sites,
                          commit=False)
    row = auth.get_key(session, key)
    audit.record(session, who, "key.create", f"key:{row.prefix}", after=snapshot(row))
    session.commit()
    return ApiKeyCreated(**public(row).model_dump(), key=key)


@router.post("/{prefix}/rotate", response_model=ApiKeyRotated, status_code=status.HTTP_201_CREATED)
def rotate_key(
    session: SessionDep, settings: SettingsDep, who: AdminDep, prefix: Prefix, body: ApiKeyRotate | None = None
) -> ApiKeyRotated:
    """Replace a key: the new one is in this response only; the old one works for the grace period."""
    grace = settings.key_rotation_grace_s if body is None or body.grace_s is None else body.grace_s
    before = snapshot(auth.get_key(session, prefix))
    key, new, old = auth.rotate_key(session, prefix, grace)
    audit.record(session, who, "key.rotate", f"key:{old.prefix}", before=before,
                 after={**snapshot(old), "new_key": snapshot(new)})
    session.commit()
    assert old.expires_at is not None
    return ApiKeyRotated(**public(new).model_dump(), key=key, replaces=old.prefix,
                         old_expires_at=from_us(old.expires_at))


@router.delete("/{prefix}", response_model=ApiKeyPublic)
def revoke_key(session: SessionDep, who: AdminDep, prefix: Prefix) -> ApiKeyPublic:
    """Revoke a key: requests with it get 401 from now on. The last admin access cannot be revoked (409)."""
    row = auth.get_key(session, prefix)
    if row.revoked:
        return public(row)
    before = snapshot(row)
    auth.revoke_key(session, prefix, commit=False)
    if row.role == Role.ADMIN.value:
        users.keep_an_admin(session, f"the key {row.prefix} cannot be revoked")
    audit.record(session, who, "key.revoke", f"key:{row.prefix}", before=before, after=snapshot(row))
    session.commit()
    return public(row)
