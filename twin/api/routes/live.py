"""``/api/v1/live``: Server-Sent Events of what changed in the twin, for pages that update without reloading.

Events (``event:`` names, JSON ``data:``):

- ``hello``: once, on connecting: the server time and the heartbeat interval;
- ``values``: latest values that moved (each a PropertyPublic: node, name, value, unit, ts, quality);
- ``alerts``: alerts raised or changed (id, node, state, priority, message, updated);
- ``workorders``: work orders created or changed (id, node, state, assignee, priority, updated);
- ``resync``: changes may have been missed: re-read what the page shows;
- ``heartbeat``: every HEARTBEAT_S with the server time, so a page can tell a quiet plant from a lost link;
- ``bye``: the stream ends after MAX_STREAM_S; reconnect at once (it is not a lost connection).

The source is the application's ``LiveFeed`` (twin/live_feed.py), filtered to the caller's sites.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from plant.wire import from_us, now_us
from twin.api.deps import ViewerDep
from twin.live_feed import LiveFeed, SiteFilter

router = APIRouter(tags=["live"])

HEARTBEAT_S = 5.0
# A stream ends after this and the client reconnects at once. Uvicorn's graceful shutdown waits for open
# responses, so this bounds how long a server stop waits for a stream, unless the server is run with a
# shorter ``timeout_graceful_shutdown``.
MAX_STREAM_S = 300.0


def feed_of(request: Request) -> LiveFeed:
    """The app's live feed, made on first use."""
    state = request.app.state
    feed: LiveFeed | None = getattr(state, "live_feed", None)
    if feed is None:
        feed = LiveFeed(state.sessionmaker, bus=getattr(state, "live", None))
        state.live_feed = feed
    return feed


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@router.get("/live", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "an event stream"}})
async def live(request: Request, who: ViewerDep) -> StreamingResponse:
    """Changes as Server-Sent Events: ``values``, ``alerts`` and a ``heartbeat`` every few seconds (of the
    caller's sites only)."""
    feed = feed_of(request)
    return StreamingResponse(
        _stream(request, feed, SiteFilter(feed.maker, who.sites)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _stream(request: Request, feed: LiveFeed, sites: SiteFilter) -> AsyncIterator[bytes]:
    q = feed.subscribe()
    loop = asyncio.get_running_loop()
    ends = loop.time() + MAX_STREAM_S
    try:
        yield _sse("hello", {"now": from_us(now_us()).isoformat(), "heartbeat_s": HEARTBEAT_S})
        while loop.time() < ends:
            try:
                item = await asyncio.wait_for(q.get(), timeout=HEARTBEAT_S)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                yield _sse("heartbeat", {"now": from_us(now_us()).isoformat()})
                continue
            if item is None:
                return
            data = await sites.keep(*item)
            if data is not None:
                yield _sse(item[0], data)
        yield _sse("bye", {"reconnect": True})
    finally:
        feed.unsubscribe(q)
