"""Edge gateways known to the platform, each with its own broker credential.

A gateway logs in to the broker as the user named by its gateway id, with a random credential printed once by
``factory-twin gateways add``. The twin keeps only a PBKDF2-SHA512 hash in Mosquitto's ``$7$`` format (the one
``mosquitto_passwd`` writes), so the same rows become Mosquitto's password file (``gateways files``) and are
checked by the embedded broker (twin/broker.py). What each user may publish and read is twin/topic_access.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

import structlog
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from plant.wire import GATEWAY_ID_PATTERN, now_us
from twin.db import get_or_missing
from twin.errors import Conflict, InvalidRequest
from twin.tables import TwinGateway
from twin.topic_access import PLANT_USER, PLATFORM_USER

RESERVED_USERS = {PLATFORM_USER: "platform's ingest", PLANT_USER: "plant's devices"}

log = structlog.get_logger(__name__)

PBKDF2_ITERATIONS = 101_000  # Mosquitto 2 verifies what the hash says; its own default is 101
_SALT_BYTES = 12  # as mosquitto_passwd
_CREDENTIAL_BYTES = 24
_GATEWAY_ID = re.compile(GATEWAY_ID_PATTERN)


def new_credential() -> str:
    """A random broker password for a gateway (192 bits, URL-safe, fits in an mqtt:// URL)."""
    return secrets.token_urlsafe(_CREDENTIAL_BYTES)


def hash_password(password: str, *, iterations: int = PBKDF2_ITERATIONS, salt: bytes | None = None) -> str:
    """``$7$<iterations>$<salt>$<hash>``: PBKDF2-HMAC-SHA512, base64, as Mosquitto's password file holds it."""
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches a ``$7$`` hash; False for anything malformed."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7" or not parts[2].isdigit():
        return False
    try:
        salt, expected = base64.b64decode(parts[3], validate=True), base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    iterations = int(parts[2])
    if not 1 <= iterations <= 10_000_000:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return hmac.compare_digest(digest, expected)


def check_name(name: str) -> str:
    """``name`` if it is a valid gateway id; InvalidRequest saying why otherwise."""
    if not _GATEWAY_ID.fullmatch(name):
        raise InvalidRequest(f"gateway id {name!r} must be 1-64 letters, digits, '-', '_' or '.'")
    if name in RESERVED_USERS:
        raise InvalidRequest(f"{name!r} is the broker user of the {RESERVED_USERS[name]}: name the gateway otherwise")
    return name


def add_gateway(session: Session, name: str, password: str | None = None) -> str:
    """Register gateway ``name`` and commit; returns its credential (``password`` or a new random one).

    A revoked gateway may be added again (it gets the new credential); an active one is a Conflict.
    """
    check_name(name)
    password = password or new_credential()
    row = session.get(TwinGateway, name)
    if row is not None and row.revoked_at is None:
        raise Conflict(f"gateway {name} exists: revoke it first to issue a new credential")
    _store(session, row, name, password)
    log.info("gateway_added", gateway_id=name)
    return password


def set_credential(session: Session, name: str, password: str) -> None:
    """Make ``password`` gateway ``name``'s credential, adding or re-activating it (for provisioning)."""
    check_name(name)
    row = session.get(TwinGateway, name)
    if row is not None and row.revoked_at is None and verify_password(password, row.password_hash):
        return
    _store(session, row, name, password)


def _store(session: Session, row: TwinGateway | None, name: str, password: str) -> None:
    """Give gateway ``name`` (its row, or None when new) the credential ``password``, active, and commit."""
    if row is None:
        row = TwinGateway(name=name, created_at=now_us())
        session.add(row)
    row.password_hash = hash_password(password)
    row.revoked_at = None
    session.commit()


def list_gateways(session: Session) -> list[TwinGateway]:
    """Every gateway, revoked ones included, by name."""
    return list(session.scalars(select(TwinGateway).order_by(TwinGateway.name)))


def revoke_gateway(session: Session, name: str) -> TwinGateway:
    """Revoke gateway ``name`` (idempotent) and commit; NotFound if there is none."""
    row = get_or_missing(session, TwinGateway, name, f"no gateway {name}")
    if row.revoked_at is None:
        row.revoked_at = now_us()
        session.commit()
        log.info("gateway_revoked", gateway_id=name)
    return row


def active_credentials(engine: Engine) -> dict[str, str]:
    """Active gateways' credential hashes by gateway id."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(TwinGateway.name, TwinGateway.password_hash).where(TwinGateway.revoked_at.is_(None))
        ).all()
    return {r.name: r.password_hash for r in rows}


def password_file(users: dict[str, str]) -> str:
    """Mosquitto's password file: ``user:$7$...`` lines, sorted."""
    return "".join(f"{user}:{hashed}\n" for user, hashed in sorted(users.items()))
