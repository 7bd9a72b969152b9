"""The reconnect loop every connector runs: one session after another, an exponential backoff between them.

A session connects, subscribes and delivers until its connection ends, which it says by raising
``ConnectorError``; the loop notes the error, waits the backoff's next delay and starts the next session.
The sink is awaited in a task of its own, so a slow sink never stalls the socket; when the sink fails, the
connector ends the session and the loop re-raises the sink's error for the agent to see.
"""

from __future__ import annotations

import asyncio
import contextlib

from edge_agent.connectors import Sink
from edge_agent.errors import ConnectorError
from edge_agent.metrics import CONNECTED, RECONNECTS, VALUES_IN
from plant.mqtt.backoff import Backoff


class ReconnectingConnector:
    """Connected or not, the last error, counts and their metrics, and the run loop of one source.

    Subclasses give ``_session`` (one connection, until it ends with ``ConnectorError``), ``_consume`` (batches to
    the sink), ``_log_lost`` (their own event for a lost session) and, where a loss means more, ``_after_loss``.

    Args:
        kind: the protocol's name in task names and ``status()`` ("mqtt", "opcua").
        source_id: the site source id.
        backoff: reconnect delays.
    """

    def __init__(self, kind: str, source_id: str, backoff: Backoff | None) -> None:
        self.kind = kind
        self.source_id = source_id
        self.backoff = backoff or Backoff()
        self._connected = False
        self._last_error = ""
        self._values = 0
        self._reconnects = 0
        self._m_values = VALUES_IN.labels(source_id)
        self._m_connected = CONNECTED.labels(source_id)
        self._m_reconnects = RECONNECTS.labels(source_id)

    async def run(self, sink: Sink) -> None:
        """Connect, subscribe and deliver batches to ``sink`` until cancelled, reconnecting with backoff."""
        consumer = asyncio.create_task(self._consume(sink), name=f"{self.kind}-sink-{self.source_id}")
        try:
            while True:
                try:
                    await self._session()
                except ConnectorError as exc:
                    self._last_error = str(exc)
                    self._log_lost(exc)
                finally:
                    was_connected = self._connected
                    self._set_connected(False)
                await self._after_loss(was_connected)
                if consumer.done():
                    consumer.result()  # the sink failed: let the agent see it
                await asyncio.sleep(self.backoff.next_delay())
                self._reconnects += 1
                self._m_reconnects.inc()
        finally:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer

    async def _session(self) -> None:
        raise NotImplementedError

    async def _consume(self, sink: Sink) -> None:
        raise NotImplementedError

    def _log_lost(self, exc: ConnectorError) -> None:
        raise NotImplementedError

    async def _after_loss(self, was_connected: bool) -> None:
        """What a lost session means beyond "not connected"; nothing by default."""

    def _set_connected(self, up: bool) -> None:
        self._connected = up
        self._m_connected.set(1 if up else 0)
