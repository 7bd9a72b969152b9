"""OPC-UA plumbing under the connector: opening a session the way the site model says (security mode,
certificate, user), one session attempt per server at a time, StatusCodes and timestamps as the agent wants
them, and the one place where asyncua's errors become the agent's.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography import x509

from edge_agent.errors import ConnectorError, SecurityError
from plant.site import OpcUaSecurity, OpcUaSource, SecurityMode
from plant.wire import Quality

_SECURITY_WORDS = ("Certificate", "Security", "IdentityToken", "UserAccessDenied", "Nonce", "Signature")
_MODES = {
    SecurityMode.SIGN: ua.MessageSecurityMode.Sign,
    SecurityMode.SIGN_AND_ENCRYPT: ua.MessageSecurityMode.SignAndEncrypt,
}
APP_URI = "urn:factory-twin:edge-agent"
BAD_NODE_CODES = {ua.StatusCodes.BadNodeIdUnknown, ua.StatusCodes.BadNodeIdInvalid}
FILTER_CODES = {
    ua.StatusCodes.BadMonitoredItemFilterUnsupported,
    ua.StatusCodes.BadMonitoredItemFilterInvalid,
    ua.StatusCodes.BadFilterNotAllowed,
    ua.StatusCodes.BadDeadbandFilterInvalid,
}
_QUALITY = (Quality.GOOD, Quality.UNCERTAIN, Quality.BAD, Quality.BAD)  # by the StatusCode's top two bits
_SESSION_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def status_of(code: int, _cache: dict[int, tuple[Quality, str]] = {}) -> tuple[Quality, str]:  # noqa: B006
    """Quality class and name of a StatusCode value (``0x80340000`` → bad, ``BadNodeIdUnknown``)."""
    hit = _cache.get(code)
    if hit is None:
        try:
            name = ua.status_codes.get_name_and_doc(code & 0xFFFF0000)[0]
        except Exception:  # an unknown code: keep the number
            name = f"0x{code:08X}"
        hit = _cache[code] = (_QUALITY[code >> 30], name)
    return hit


def to_us(dt: datetime | None) -> int | None:
    """Epoch µs of an OPC-UA timestamp; None for none or the null time (1601)."""
    if dt is None or dt.year <= 1601:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


def session_lock(endpoint: str) -> asyncio.Lock:
    """The lock that keeps session attempts to one server (host:port) one at a time."""
    locks = _SESSION_LOCKS.setdefault(asyncio.get_running_loop(), {})
    key = (urlparse(endpoint).netloc or endpoint).lower()
    return locks.setdefault(key, asyncio.Lock())


def translate_error(exc: BaseException, endpoint: str) -> ConnectorError:
    """An asyncua, socket or timeout error as a ConnectorError (SecurityError when credentials are wrong)."""
    if isinstance(exc, ConnectorError):
        return exc
    if isinstance(exc, ua.UaStatusCodeError) and not isinstance(exc, ua.uaerrors.UaStatusCodeErrors):
        name = ua.status_codes.get_name_and_doc(exc.code)[0]
        cls = SecurityError if any(w in name for w in _SECURITY_WORDS) else ConnectorError
        return cls(f"OPC-UA {endpoint}: server answered {name}")
    if isinstance(exc, TimeoutError):
        return ConnectorError(f"OPC-UA {endpoint}: no answer in time")
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ua.UaError) and "No matching endpoints" in text:
        return SecurityError(f"OPC-UA {endpoint}: the server offers no such security mode ({text})")
    if isinstance(exc, ValueError):  # cryptography: a key or certificate file it cannot read
        return SecurityError(f"OPC-UA {endpoint}: certificate or key unusable: {text}")
    return ConnectorError(f"OPC-UA {endpoint}: {text}")


def certificate_uri(path: str) -> str | None:
    """The application URI in a certificate's subjectAltName (the server checks it against ours)."""
    data = Path(path).read_bytes()
    cert = (
        x509.load_pem_x509_certificate(data)
        if b"-----BEGIN" in data
        else x509.load_der_x509_certificate(data)
    )
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


async def _configure(client: Client, sec: OpcUaSecurity, password: str | None) -> None:
    if sec.mode != SecurityMode.NONE:
        assert sec.certificate is not None  # the site model checks both
        assert sec.private_key is not None
        client.application_uri = certificate_uri(sec.certificate) or APP_URI
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            sec.certificate,
            sec.private_key,
            server_certificate=sec.server_certificate,
            mode=_MODES[sec.mode],
        )
    if sec.username:
        client.set_user(sec.username)
        client.set_password(password or "")


async def connect_client(
    source: OpcUaSource,
    password: str | None,
    watchdog_s: float = 5.0,
    on_lost: Callable[[Exception], Awaitable[None]] | None = None,
) -> Client:
    """A fresh, connected asyncua Client for ``source``; ConnectorError or SecurityError if that fails."""
    client = Client(source.endpoint, timeout=source.timeout_s, watchdog_intervall=max(1.0, watchdog_s / 2))
    client.name = client.description = "factory-twin edge agent"
    client.application_uri = APP_URI
    # A short session timeout: after a network loss the server drops our old session within a minute.
    client.session_timeout = int(max(30.0, watchdog_s * 6) * 1000)
    client.connection_lost_callback = on_lost
    try:
        await asyncio.wait_for(_configure(client, source.security, password), source.timeout_s)
        await asyncio.wait_for(client.connect(), source.timeout_s)
    except (OSError, TimeoutError, ua.UaError, ValueError) as exc:
        with contextlib.suppress(Exception):
            client.disconnect_socket()
        raise translate_error(exc, source.endpoint) from exc
    except BaseException:
        with contextlib.suppress(Exception):
            client.disconnect_socket()
        raise
    return client
