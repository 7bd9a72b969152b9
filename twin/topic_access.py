"""Who may publish and read which topics on the broker: one set of rules for Mosquitto's ACL file and the
embedded broker.

Under the topic root (plant/wire.py) a gateway may publish only its own uplink and read only its own acks and
commands; the platform's ingest user reads every uplink and writes acks and commands::

    gateway G   write  <root>/G/uplink        read  <root>/G/ack   <root>/G/cmd/#
    platform    read   <root>/+/uplink        write <root>/+/ack   <root>/+/cmd/#

Topics outside the root carry the plant's own telemetry (the agents' MQTT sources): in Mosquitto's file the
gateways may read ``plant_topics``; the embedded broker, a one-machine convenience, leaves them open to every
client, anonymous ones included, and refuses anonymous clients anything under the root.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from plant.wire import TOPIC_ROOT

PLATFORM_USER = "platform"
PLANT_USER = "plant"


class Access(StrEnum):
    """What a user does with a topic."""

    READ = "read"  # subscribe and receive
    WRITE = "write"  # publish


@dataclass(frozen=True, slots=True)
class Grant:
    """One ACL line: ``access`` to topics matching ``pattern`` (``%u`` stands for the user name)."""

    access: Access
    pattern: str

    def for_user(self, user: str) -> str:
        """The pattern with the user name filled in."""
        return self.pattern.replace("%u", user)


def gateway_grants(root: str = TOPIC_ROOT) -> tuple[Grant, ...]:
    """What a gateway may do under the root."""
    return (Grant(Access.WRITE, f"{root}/%u/uplink"), Grant(Access.READ, f"{root}/%u/ack"),
            Grant(Access.READ, f"{root}/%u/cmd/#"))


def platform_grants(root: str = TOPIC_ROOT) -> tuple[Grant, ...]:
    """What the platform's ingest user may do under the root."""
    return (Grant(Access.READ, f"{root}/+/uplink"), Grant(Access.WRITE, f"{root}/+/ack"),
            Grant(Access.WRITE, f"{root}/+/cmd/#"))


def covers(grant: str, wanted: str) -> bool:
    """Whether every topic matching filter ``wanted`` also matches filter ``grant`` (a topic is a filter too)."""
    g, w = grant.split("/"), wanted.split("/")
    for i, seg in enumerate(g):
        if seg == "#":
            return True
        if i >= len(w) or w[i] == "#":
            return False
        if seg != "+" and (w[i] == "+" or w[i] != seg):
            return False
    return len(w) == len(g)


def may_touch(filter_: str, root: str) -> bool:
    """Whether filter ``filter_`` can match a topic under ``root``."""
    f, r = filter_.split("/"), root.split("/")
    for i, seg in enumerate(r):
        if i >= len(f):
            return False  # the filter ends at or above the root: it matches no topic *under* it
        if f[i] == "#":
            return True
        if f[i] not in ("+", seg):
            return False
    return len(f) > len(r)


def _unshared(filter_: str) -> str:
    """``$share/<group>/<filter>`` → ``<filter>``."""
    if filter_.startswith("$share/"):
        parts = filter_.split("/", 2)
        return parts[2] if len(parts) == 3 else ""
    return filter_


class TopicRules:
    """The rules for one topic root, given who is a gateway.

    Args:
        root: the topic root of the uplink and ack topics.
        platform_user: the user name of the platform's ingest clients.
    """

    def __init__(self, root: str = TOPIC_ROOT, platform_user: str = PLATFORM_USER) -> None:
        self.root = root
        self.platform_user = platform_user

    def grants(self, user: str | None) -> tuple[str, ...]:
        """Filters under the root the user may read and write, as ``access:filter`` strings."""
        if user is None:
            return ()
        grants = platform_grants(self.root) if user == self.platform_user else gateway_grants(self.root)
        return tuple(f"{g.access}:{g.for_user(user)}" for g in grants)

    def allowed(self, user: str | None, access: Access, topic: str) -> bool:
        """Whether ``user`` (None: anonymous) may ``access`` the topic or filter ``topic``."""
        topic = _unshared(topic) if access is Access.READ else topic
        if not topic or (access is Access.WRITE and ("+" in topic or "#" in topic)):
            return False
        if not may_touch(topic, self.root):
            return True
        if user is None or "\x00" in topic:
            return False
        if user != self.platform_user and not self._own_segment(user, topic):
            return False
        grants = platform_grants(self.root) if user == self.platform_user else gateway_grants(self.root)
        return any(g.access is access and covers(g.for_user(user), topic) for g in grants)

    def _own_segment(self, user: str, topic: str) -> bool:
        # "%u" must stand for one whole topic segment: a user named "+" or "#" gets nothing
        return "/" not in user and user not in ("+", "#") and topic.startswith(f"{self.root}/{user}/")

    def mosquitto_acl(self, gateways: list[str], plant_topics: tuple[str, ...] = ("plant/#",),
                      plant_user: str | None = PLANT_USER) -> str:
        """Mosquitto's ACL file: the platform user, the plant user, then one block per gateway."""
        lines = [f"# Who may publish and read where; topic root {self.root} (plant/wire.py). Generated by",
                 "# `factory-twin gateways files`: edit the gateways with `factory-twin gateways`, not here.", "",
                 f"user {self.platform_user}"]
        lines += [f"topic {g.access} {g.pattern}" for g in platform_grants(self.root)]
        lines.append("topic read $SYS/#")
        if plant_user:
            lines += ["", "# the plant's own devices publish telemetry for the agents' MQTT sources",
                      f"user {plant_user}"]
            lines += [f"topic readwrite {t}" for t in plant_topics]
        for name in sorted(gateways):
            lines += ["", f"user {name}"]
            lines += [f"topic {g.access} {g.for_user(name)}" for g in gateway_grants(self.root)]
            lines += [f"topic read {t}" for t in plant_topics]
        return "\n".join(lines) + "\n"
