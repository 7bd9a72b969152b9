"""Where a webhook may go: the target policy that keeps deliveries off the plant's internal network.

A subscription's URL is a request the platform makes on an admin's behalf from inside the plant network, so
it must not become a way to reach what only the platform can reach (server-side request forgery): the
database, the broker, a PLC's web page, a cloud metadata service. The policy is checked twice:

- when a subscription is created or changed (``check_url``): the URL's form, and a host that is a literal IP
  address or a ``localhost`` name, so an admin learns at once;
- at every delivery (``resolve``): the host name is resolved then and *every* address it resolves to must be
  allowed; the request then goes to the checked address (the name is kept for the ``Host`` header, TLS SNI
  and certificate verification), so a second lookup answering differently (DNS rebinding) cannot redirect it.

Refused unless allowed: loopback, link-local (cloud metadata among them), private (RFC 1918, IPv6 ULA),
shared address space (100.64.0.0/10, carrier-grade NAT), unspecified, multicast, reserved and otherwise not
globally routable addresses; IPv4 addresses inside IPv6 (mapped, NAT64, 6to4) are judged as IPv4. Cloud
metadata addresses are refused even when allowed. ``allow_private`` (setting ``webhook_allow_private``) lists
the plant's own receivers: CIDR networks (``10.20.0.0/16``, ``127.0.0.1``) and exact host names
(``alerts.plant.lan``) whose addresses may be non-public. ``hosts`` (setting ``webhook_allowlist``) restricts
targets to matching host patterns (``hooks.example.com``, ``*.example.com``, ``127.0.0.1:9000``); empty: any.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from twin.errors import ConfigError

if TYPE_CHECKING:
    from twin.config import TwinSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# host, port → the addresses it resolves to (strings); raises OSError when it does not resolve
Resolver = Callable[[str, int], list[str]]

METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200", "192.0.0.192")
)
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_PRIVATE = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


class TargetRefused(ConfigError):
    """The webhook target is not allowed by the policy (its form, host or an address it resolves to)."""


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host`` (IPv4 and IPv6), in its order, without repeats."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public internet address (``loopback``, ``private``...), or None when it is one."""
    if ip in METADATA:
        return "a cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour
        if inner is None and ip in _NAT64:
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if inner is not None:
            reason = forbidden_reason(inner)
            return None if reason is None else f"{reason} (as {inner} inside IPv6)"
    checks = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip in _SHARED, "shared address space (carrier-grade NAT)"),
        (any(ip in net for net in _PRIVATE), "private"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global, "not globally routable"),
    )
    return next((f"{name} address" for hit, name in checks if hit), None)


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (``ip``) and what to call the host (``host``, for Host and TLS)."""

    url: str
    scheme: str
    host: str
    port: int
    ip: str = ""

    def pinned_url(self) -> str:
        """The URL with its host replaced by the checked address, for a connection that cannot re-resolve."""
        parts = urlsplit(self.url)
        netloc = f"[{self.ip}]" if ":" in self.ip else self.ip
        return parts._replace(netloc=f"{netloc}:{self.port}").geturl()

    def host_header(self) -> str:
        """The Host header the receiver expects: the name, with the port when it is not the scheme's default."""
        name = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return name if self.port == default else f"{name}:{self.port}"


def _networks(entries: Iterable[str]) -> tuple[tuple[IPNetwork, ...], frozenset[str]]:
    nets: list[IPNetwork] = []
    names: set[str] = set()
    for entry in entries:
        entry = entry.strip().lower()
        if not entry:
            continue
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            if "*" in entry or "/" in entry:
                raise ConfigError(f"webhook_allow_private entry {entry!r} is neither a CIDR nor a host name") from None
            names.add(entry.rstrip("."))
    return tuple(nets), frozenset(names)


@dataclass(frozen=True)
class TargetPolicy:
    """Which webhook targets deliveries may reach.

    Args:
        hosts: host patterns targets must match (``webhook_allowlist``), optionally ``:port``; empty: any host.
        allow_private: CIDRs and exact host names of the plant's own receivers, which may have non-public
            addresses (``webhook_allow_private``); cloud metadata addresses stay refused.
        resolver: host → addresses at delivery time; the system's by default (tests inject their own).
    """

    hosts: tuple[str, ...] = ()
    allow_private: tuple[str, ...] = ()
    resolver: Resolver = system_resolver
    _nets: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)
    _names: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        nets, names = _networks(self.allow_private)
        object.__setattr__(self, "_nets", nets)
        object.__setattr__(self, "_names", names)

    @classmethod
    def from_settings(cls, settings: TwinSettings) -> TargetPolicy:
        """The policy the settings ``webhook_allowlist`` and ``webhook_allow_private`` describe."""
        return cls(hosts=tuple(settings.webhook_allowlist), allow_private=tuple(settings.webhook_allow_private))

    def check_url(self, url: str) -> Target:
        """The URL's form and what can be judged without DNS (a literal address, a localhost name)."""
        target = _parse(url)
        if self.hosts and not _host_allowed(target.host, target.port, self.hosts):
            raise TargetRefused(f"webhook host {target.host!r} is not in the webhook allowlist")
        literal = _literal_address(target.host)
        if literal is not None:
            self._check_address(target.host, literal)
        elif _is_local_name(target.host) and target.host not in self._names:
            raise TargetRefused(
                f"webhook host {target.host!r} is this machine (loopback); "
                "add it to webhook_allow_private to allow it"
            )
        return target

    def resolve(self, url: str) -> Target:
        """The target pinned to a checked address: every address the host resolves to now must be allowed.

        OSError when the host does not resolve (worth retrying); TargetRefused when the policy forbids it.
        """
        target = self.check_url(url)
        literal = _literal_address(target.host)
        if literal is not None:
            addresses = [literal]
        else:
            found = self.resolver(target.host, target.port)
            if not found:
                raise OSError(f"{target.host} resolves to no address") from None
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]
        for ip in addresses:
            self._check_address(target.host, ip)
        return Target(target.url, target.scheme, target.host, target.port, str(addresses[0]))

    def _check_address(self, host: str, ip: IPAddress) -> None:
        reason = forbidden_reason(ip)
        if reason is None:
            return
        if ip not in METADATA and (host in self._names or any(ip in net for net in self._nets)):
            return
        shown = host if host == str(ip) else f"{host} ({ip})"
        hint = "" if ip in METADATA else "; add it to webhook_allow_private if it is the plant's own receiver"
        raise TargetRefused(f"webhook target {shown} is a {reason}{hint}")


def _parse(url: str) -> Target:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise TargetRefused(f"webhook URL is malformed: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise TargetRefused(f"webhook URL must be http or https, not {parts.scheme or 'missing'!r}")
    if not parts.hostname:
        raise TargetRefused("webhook URL has no host")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("webhook URL must not carry credentials; the signature authenticates")
    if parts.fragment:
        raise TargetRefused("webhook URL must not have a fragment")
    try:
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"webhook URL has an invalid port: {exc}") from None
    host = parts.hostname.lower().rstrip(".")
    try:  # an international name as DNS and the Host header carry it
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise TargetRefused("webhook URL has an invalid host name") from None
    if not host or any(c.isspace() or ord(c) < 0x21 or ord(c) > 0x7E for c in host):
        raise TargetRefused("webhook URL has an invalid host")
    port = port if port is not None else (443 if parts.scheme == "https" else 80)
    return Target(url, parts.scheme, host, port)


def _literal_address(host: str) -> IPAddress | None:
    """The address a host names without DNS: an IP literal, or a legacy IPv4 form resolvers accept (2130706433,
    0x7f.1, 017700000001)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host.replace(".", "").isalnum() and host[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _is_local_name(host: str) -> bool:
    return host in _LOCAL_NAMES or host.endswith(".localhost")


def _host_allowed(host: str, port: int, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        pat_host, _, pat_port = pattern.lower().rpartition(":") if _has_port(pattern) else (pattern.lower(), "", "")
        if pat_port and pat_port != "*" and str(port) != pat_port:
            continue
        if fnmatch.fnmatchcase(host, pat_host.strip("[]")):
            return True
    return False


def _has_port(pattern: str) -> bool:
    head, sep, tail = pattern.rpartition(":")
    if not sep or not (tail.isdigit() or tail == "*"):
        return False
    try:  # a bare IPv6 address is not "host:port"
        ipaddress.ip_address(pattern)
    except ValueError:
        return bool(head)
    return False
