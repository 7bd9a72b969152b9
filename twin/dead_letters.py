"""Dead letters: uplink messages that could not be stored, kept with the reason so that none vanishes unseen.

Ingest moves a message here (and acknowledges it) when storing it is impossible or would never succeed: too
large, undecodable, an unusable or foreign gateway id (``twin.uplink_checks``), or a database refusal or error
that sending it again would not cure. Each row keeps the reason, the gateway the message claimed, the topic,
the size, the first bytes and, unless it was too large, the whole payload: after a fix,
``factory-twin ingest replay ID`` submits it again through the same ingest path.

The table is bounded: beyond ``keep`` rows the oldest go (a hostile client must not fill the disk).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import Engine, delete, func, insert, select, update

from plant.wire import now_us
from twin.tables import DeadLetter

log = structlog.get_logger(__name__)

HEAD_BYTES = 256
KEEP = 10_000
_PRUNE_EVERY = 500

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """One dead letter as listed.

    Args:
        id: its id (for replay).
        received_at: when ingest received it, µs.
        reason: the reason code (``twin.uplink_checks``, ``store_refused``, ``internal_error``...).
        detail: what was wrong, for people.
        gateway: the gateway it claimed, cleaned and cut.
        topic: the topic it came on.
        size: payload size, bytes.
        head: the first bytes of the payload.
        replayable: whether the whole payload is kept.
        replayed_at: when it was replayed and stored, µs.
    """

    id: int
    received_at: int
    reason: str
    detail: str
    gateway: str
    topic: str
    size: int
    head: bytes
    replayable: bool
    replayed_at: int | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, the head as text with undecodable bytes escaped."""
        out: dict[str, Any] = {k: getattr(self, k) for k in self.__slots__}
        out["head"] = self.head.decode("utf-8", "backslashreplace")
        return out


def clean_text(text: str, most: int) -> str:
    """``text`` cut to ``most`` characters, control characters (NUL among them) replaced by '?'."""
    cut = text[:most]
    return cut if cut.isprintable() else "".join(c if c.isprintable() else "?" for c in cut)


class DeadLetters:
    """Writes and reads the dead letters of one database. Thread-safe.

    Args:
        engine: the database, at the current schema.
        keep: rows kept; older ones are deleted.
        payload_max: largest payload kept whole (larger ones keep their head only).
    """

    def __init__(self, engine: Engine, keep: int = KEEP, payload_max: int = 1 << 20) -> None:
        self.engine = engine
        self.keep = keep
        self.payload_max = payload_max
        self._since_prune = 0
        self._lock = threading.Lock()

    def row(self, reason: str, detail: str, topic: str, payload: bytes | bytearray, gateway: str = "") -> Row:
        """The row that keeps one message (write it with ``write``)."""
        return {
            "received_at": now_us(), "reason": reason[:32], "detail": clean_text(detail, 2000),
            "gateway": clean_text(gateway, 64), "topic": clean_text(topic, 256), "size": len(payload),
            "head": bytes(payload[:HEAD_BYTES]),
            "payload": bytes(payload) if len(payload) <= self.payload_max else None,
        }

    def record(self, reason: str, detail: str, topic: str, payload: bytes | bytearray, gateway: str = "") -> int | None:
        """Keep one message; returns its id, or None when the database could not take it (logged)."""
        return self.write([self.row(reason, detail, topic, payload, gateway)])

    def write(self, rows: list[Row]) -> int | None:
        """Keep messages in one transaction; returns the last id, or None when the database could not (logged)."""
        if not rows:
            return None
        try:
            with self.engine.begin() as conn:
                if len(rows) > 1:
                    conn.execute(insert(DeadLetter), rows[:-1])
                new_id = conn.execute(insert(DeadLetter).returning(DeadLetter.id), rows[-1]).scalar_one()
                if self._prune_due(len(rows)):
                    conn.execute(delete(DeadLetter).where(DeadLetter.id <= new_id - self.keep))
        except Exception as exc:  # the messages are acknowledged either way: say so loudly
            error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            for r in rows:
                log.error("dead_letter_not_recorded", reason=r["reason"], topic=r["topic"], size=r["size"],
                          head=r["head"][:64], error=error)
            return None
        return int(new_id)

    def _prune_due(self, added: int) -> bool:
        with self._lock:
            self._since_prune += added
            if self._since_prune < _PRUNE_EVERY:
                return False
            self._since_prune = 0
            return True

    def recent(self, reason: str | None = None, since: int | None = None, limit: int = 100) -> list[DeadLetterRow]:
        """The newest dead letters first, optionally of one reason and received since ``since`` (µs)."""
        q = select(DeadLetter.id, DeadLetter.received_at, DeadLetter.reason, DeadLetter.detail,
                   DeadLetter.gateway, DeadLetter.topic, DeadLetter.size, DeadLetter.head,
                   DeadLetter.payload.is_not(None), DeadLetter.replayed_at)
        if reason is not None:
            q = q.where(DeadLetter.reason == reason)
        if since is not None:
            q = q.where(DeadLetter.received_at >= since)
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(DeadLetter.id.desc()).limit(limit)).all()
        return [DeadLetterRow(id=r[0], received_at=r[1], reason=r[2], detail=r[3], gateway=r[4], topic=r[5],
                              size=r[6], head=r[7], replayable=bool(r[8]), replayed_at=r[9]) for r in rows]

    def counts(self) -> dict[str, int]:
        """Dead letters held, by reason."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(DeadLetter.reason, func.count()).group_by(DeadLetter.reason)).all()
        return {reason: int(n) for reason, n in rows}

    def payload(self, dead_letter_id: int) -> tuple[str, bytes | None] | None:
        """The topic and whole payload of one dead letter (payload None if too large to keep); None if absent."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(DeadLetter.topic, DeadLetter.payload).where(DeadLetter.id == dead_letter_id)
            ).one_or_none()
        return None if row is None else (row.topic, row.payload)

    def mark_replayed(self, dead_letter_id: int) -> None:
        """Note that a dead letter was replayed and stored."""
        with self.engine.begin() as conn:
            conn.execute(update(DeadLetter).where(DeadLetter.id == dead_letter_id).values(replayed_at=now_us()))
