"""Protocol connectors: OPC-UA and MQTT (plain JSON, Sparkplug B). They know the site's bindings, never the twin.

Every connector follows one contract: ``await connector.run(sink)`` connects, subscribes, and for every group of
values that arrive together awaits ``sink(ReadingBatch)``; it reconnects with backoff on its own and returns only
when cancelled. ``status()`` says how it is doing, for logs and health.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from edge_agent.reading import ReadingBatch

Sink = Callable[[ReadingBatch], Awaitable[None]]


class Connector(Protocol):
    """What the agent needs of a connector."""

    source_id: str

    async def run(self, sink: Sink) -> None:
        """Run until cancelled: connect, subscribe, deliver batches to ``sink``, reconnect on failure."""
        ...

    def status(self) -> dict[str, object]:
        """Connected or not, last error, counts: for health endpoints and logs."""
        ...
