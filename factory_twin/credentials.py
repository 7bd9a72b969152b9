"""The demo's own keys, made once per data directory: ``<data dir>/demo-credentials.json`` (mode 0600).

A restart reuses the admin key (and the gateway's agent key) it finds there while the database still accepts
them, so the demo leaves one standing admin key behind, not one per run, and the key a person wrote down
keeps working. A key that was revoked, has expired or belongs to another database is replaced, and the file
rewritten. ``--fresh`` empties the directory, file included: new keys.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from plant.wire import now_us
from twin import audit, auth
from twin.auth import Role
from twin.errors import Unauthenticated
from twin.exports import iso

FILE_NAME = "demo-credentials.json"
ACTOR = "factory-twin demo"


@dataclass(frozen=True, slots=True)
class DemoCredentials:
    """The demo's keys, and whether the admin key was made by this run."""

    admin_key: str
    agent_key: str
    path: Path
    new: bool


def demo_credentials(session: Session, data_dir: Path, gateway_id: str) -> DemoCredentials:
    """The keys in ``data_dir``'s credentials file where still valid, new ones (written there) otherwise."""
    path = data_dir / FILE_NAME
    stored = _read(path)
    admin = str(stored.get("admin_key", ""))
    agent = str(stored.get("agent_key", "")) if stored.get("gateway") == gateway_id else ""
    admin_ok, agent_ok = _valid(session, admin, Role.ADMIN), _valid(session, agent, Role.AGENT)
    if admin_ok and agent_ok:
        return DemoCredentials(admin, agent, path, new=False)
    if not admin_ok:
        admin = _make(session, Role.ADMIN, "demo admin")
    if not agent_ok:
        agent = _make(session, Role.AGENT, f"gateway {gateway_id}")
    session.commit()
    _write(path, {"admin_key": admin, "agent_key": agent, "gateway": gateway_id,
                  "created_at": stored.get("created_at") if admin_ok else iso(now_us())})
    return DemoCredentials(admin, agent, path, new=not admin_ok)


def _make(session: Session, role: Role, name: str) -> str:
    key = auth.create_key(session, role, name, commit=False)
    audit.record(session, ACTOR, "key.create", f"key:{key[:16]}", after={"role": role.value, "name": name},
                 address="local")
    return key


def _valid(session: Session, key: str, role: Role) -> bool:
    if not key:
        return False
    try:
        return auth.authenticate(session, key).role is role
    except Unauthenticated:
        return False


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    """Write the file readable by its owner alone, atomically (never a moment with looser permissions)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
