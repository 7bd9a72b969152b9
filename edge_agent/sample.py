"""Sample: one normalised value on its way through the agent, cheap to make and to write as wire JSON.

A ``Sample`` holds exactly the fields of ``plant.wire.Value``, already checked by normalise.py, in a slotted
class: making one costs a fifth of an unvalidated pydantic model, and ``to_json`` writes the same JSON that
``Value.model_dump_json`` would (the platform parses it as a Value). ``to_value`` gives the pydantic model.
"""

from __future__ import annotations

import json

from plant.wire import Flag, Quality, Scalar, Value

_dumps = json.dumps
_QUALITY_JSON = {q: q.value for q in Quality}  # an enum's .value is a slow property lookup
_FLAGS_JSON: dict[tuple[Flag, ...], str] = {(): ""}  # the flags tuples seen, as JSON array contents


def _flags_json(flags: tuple[Flag, ...]) -> str:
    text = _FLAGS_JSON[flags] = ",".join(f'"{f.value}"' for f in flags)
    return text


class Sample:
    """One property value of one node, normalised; the wire Value's fields.

    Args:
        node: twin node id (a site identifier: safe in JSON without escaping).
        prop: property name (a site identifier).
        value: the value in the property's unit and type, or None.
        ts: timestamp after clock checks, µs.
        server_ts: the server's timestamp, µs, or None.
        recv_ts: the gateway's receive time, µs.
        quality: good, uncertain or bad.
        flags: what happened to it on the way.
    """

    __slots__ = ("flags", "node", "prop", "quality", "recv_ts", "server_ts", "ts", "value")

    def __init__(
        self,
        node: str,
        prop: str,
        value: Scalar | None,
        ts: int,
        server_ts: int | None,
        recv_ts: int | None,
        quality: Quality,
        flags: tuple[Flag, ...],
    ) -> None:
        self.node = node
        self.prop = prop
        self.value = value
        self.ts = ts
        self.server_ts = server_ts
        self.recv_ts = recv_ts
        self.quality = quality
        self.flags = flags

    def __repr__(self) -> str:
        return f"Sample({self.node}.{self.prop}={self.value!r} @{self.ts} {self.quality.value} {self.flags})"

    def with_flag(self, flag: Flag) -> Sample:
        """A copy with one more flag."""
        return Sample(
            self.node,
            self.prop,
            self.value,
            self.ts,
            self.server_ts,
            self.recv_ts,
            self.quality,
            (*self.flags, flag),
        )

    def to_value(self) -> Value:
        """The pydantic wire model (validated)."""
        return Value(
            node=self.node,
            prop=self.prop,
            value=self.value,
            ts=self.ts,
            server_ts=self.server_ts,
            recv_ts=self.recv_ts,
            quality=self.quality,
            flags=self.flags,
        )

    def to_json(self) -> str:
        """The wire Value as JSON, written directly (values are finite: normalise refused the rest)."""
        v = self.value
        t = type(v)
        if t is float:
            js = repr(v)
        elif t is bool:
            js = "true" if v else "false"
        elif t is int:
            js = str(v)
        elif v is None:
            js = "null"
        else:
            js = _dumps(v)
        server = self.server_ts
        recv = self.recv_ts
        flags = _FLAGS_JSON.get(self.flags)
        if flags is None:
            flags = _flags_json(self.flags)
        return (
            f'{{"node":"{self.node}","prop":"{self.prop}","value":{js},"ts":{self.ts},'
            f'"server_ts":{"null" if server is None else server},"recv_ts":{"null" if recv is None else recv},'
            f'"quality":"{_QUALITY_JSON[self.quality]}","flags":[{flags}]}}'
        )
