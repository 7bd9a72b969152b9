"""A tiny HTTP server on the event loop that serves the agent's Prometheus registry at any path."""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edge_agent.metrics import REGISTRY

_MAX_REQUEST = 8192


async def serve_metrics(host: str, port: int) -> asyncio.Server:
    """Start serving ``/metrics`` on host:port (port 0 picks a free one); the caller serves it forever."""
    return await asyncio.start_server(_handle, host, port)


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        method = request.split(b" ", 1)[0]
        if method not in (b"GET", b"HEAD") or len(request) > _MAX_REQUEST:
            body, status, ctype = b"method not allowed\n", b"405 Method Not Allowed", b"text/plain"
        else:
            body, status, ctype = generate_latest(REGISTRY), b"200 OK", CONTENT_TYPE_LATEST.encode()
        head = b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (
            status,
            ctype,
            len(body),
        )
        writer.write(head + (body if method != b"HEAD" else b""))
        await writer.drain()
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
