"""The fast path's framing against hostile bytes: whatever a broker (or whoever sits in its place) sends, a Stream
hands on whole packets or ends the connection with a reason; no exception escapes, nothing is handed on twice."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from plant.mqtt.stream import Stream, publish_packet


class ChunkSocket:
    """A non-blocking socket that yields the given chunks, then would block."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)

    def recv(self, _n: int) -> bytes:
        if not self.chunks:
            raise BlockingIOError
        return self.chunks.pop(0)

    def send(self, data: bytes) -> int:
        return len(data)


def _drain(chunks: list[bytes], v5: bool) -> tuple[list[tuple[Any, ...]], list[str]]:
    got: list[tuple[Any, ...]] = []
    ends: list[str] = []
    loop = asyncio.new_event_loop()
    try:
        stream = Stream(ChunkSocket(chunks), loop, lambda *m: got.append(m), ends.append, lambda *_: None, v5, 60)
        while stream.receive():
            stream.handle(256)
        while stream.buffered and not stream.ended and stream.handle(256) < 256:
            pass
    finally:
        loop.close()
    return got, ends


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2_000), st.lists(st.integers(min_value=0), max_size=8), st.booleans())
def test_random_bytes_end_the_connection_or_frame_cleanly(data: bytes, cuts: list[int], v5: bool) -> None:
    got, ends = _drain(_cut(data, cuts), v5)
    assert len(ends) <= 1
    assert all(isinstance(m[0], bytes) and isinstance(m[1], bytes) for m in got)
    if ends:
        assert ends[0] in {"Protocol error", "Server disconnect"}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.text(min_size=1, max_size=30), st.binary(max_size=300)), min_size=1, max_size=10),
    st.lists(st.integers(min_value=0), max_size=12),
    st.binary(max_size=40),
    st.booleans(),
)
def test_whole_packets_then_garbage_arrive_in_order_before_any_end(
    msgs: list[tuple[str, bytes]], cuts: list[int], garbage: bytes, v5: bool
) -> None:
    good = b"".join(publish_packet(t, p, v5) for t, p in msgs)
    got, ends = _drain(_cut(good + garbage, cuts), v5)
    assert [(m[0], m[1]) for m in got[: len(msgs)]] == [(t.encode(), p) for t, p in msgs]
    assert len(ends) <= 1
