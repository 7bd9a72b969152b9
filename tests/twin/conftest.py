"""Fixtures of the ingest tests: a topic root of their own on the shared broker, and an uplink client on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.twin.uplink_client import UplinkClient


@pytest.fixture
def root(topic_prefix: str) -> str:
    """The topic root the ingest under test serves."""
    return f"{topic_prefix}/v1"


@pytest.fixture
def uplink(mqtt_broker: tuple[str, int], root: str) -> Iterator[UplinkClient]:
    """A stand-in for an agent's uplink on ``root``."""
    client = UplinkClient(*mqtt_broker, root)
    yield client
    client.close()
