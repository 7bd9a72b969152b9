"""The one parser of broker URLs: ``mqtt[s]://[user[:password]@]host[:port][?ca_file=PATH&client_id=ID]``.

``mqtts`` means TLS (port 8883 unless given; the system's CAs unless ``ca_file`` names a bundle), ``mqtt`` plain
TCP (port 1883). User name and password are percent-decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from plant.errors import BrokerUrlError

_QUERY_KEYS = frozenset({"ca_file", "client_id"})


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    """Where a broker listens and how to log in.

    Args:
        host: broker host name or address.
        port: TCP port (1883 plain, 8883 TLS by default).
        tls: connect with TLS (``mqtts``).
        username: user name, or None for anonymous.
        password: password for ``username``.
        ca_file: CA bundle for the broker's certificate (system CAs when None).
        client_id: client id the URL asks for, or None to let the caller choose.
    """

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    client_id: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        """Parse an MQTT URL; raises BrokerUrlError (a ValueError) with the reason."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise BrokerUrlError(f"broker URL must start with mqtt:// or mqtts://, not {parts.scheme or '(none)'}://")
        if not parts.hostname:
            raise BrokerUrlError("broker URL has no host")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise BrokerUrlError(f"broker URL port: {exc}") from None
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        unknown = sorted(set(query) - _QUERY_KEYS)
        if unknown:
            raise BrokerUrlError(f"broker URL: unknown option(s) {unknown}; known: {sorted(_QUERY_KEYS)}")
        return cls(
            host=parts.hostname,
            port=port,
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            ca_file=query.get("ca_file") or None,
            client_id=query.get("client_id") or None,
        )

    def redacted(self) -> str:
        """The URL without its password, for logs."""
        user = f"{self.username}:***@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"
