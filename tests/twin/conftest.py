"""Fixtures of the ingest tests: a topic root of their own on the shared broker, and an uplink client on it;
a user with a known password for the sign-in tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from tests.twin.uplink_client import UplinkClient
from twin.db import make_sessionmaker
from twin.users import create_user

PASSWORD = "the right password"


def with_user(engine: Engine, name: str, role: str) -> Engine:
    """``engine``, with a user ``name`` of ``role`` made in it whose password is ``PASSWORD``."""
    with make_sessionmaker(engine)() as s:
        create_user(s, name, PASSWORD, role)
    return engine


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
