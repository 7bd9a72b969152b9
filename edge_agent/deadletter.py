"""The dead-letter file: refused inputs kept for people to inspect, one JSON object per line, bounded in size.

When the file passes ``max_bytes`` it is rotated (``deadletter.jsonl`` → ``.1`` → ``.2`` …) and the oldest
backup is removed, so the disk used is at most ``max_bytes * (backups + 1)`` plus one line. Payloads are cut
to ``max_payload`` bytes; binary payloads are kept as base64.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import structlog

from plant.wire import now_us

log = structlog.get_logger(__name__)


class DeadLetterFile:
    """A bounded, rotated JSON-lines file of refused inputs.

    Args:
        path: the file to append to (its folder is created).
        max_bytes: size at which the file is rotated.
        backups: rotated files kept.
        max_payload: bytes of each payload kept.
    """

    def __init__(
        self, path: str | Path, max_bytes: int = 10 << 20, backups: int = 3, max_payload: int = 4096
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.max_payload = max_payload
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._size = self.path.stat().st_size if self.path.exists() else 0
        self.written = 0

    def write(
        self, source: str, reason: str, detail: str = "", payload: bytes | str | object | None = None
    ) -> None:
        """Append one refused input; never raises (a full disk must not stop the agent)."""
        entry: dict[str, object] = {
            "ts": now_us(),
            "source": source,
            "reason": reason,
            "detail": detail[:1000],
        }
        if isinstance(payload, bytes):
            cut = payload[: self.max_payload]
            try:
                entry["payload"] = cut.decode("utf-8")
            except UnicodeDecodeError:
                entry["payload_b64"] = base64.b64encode(cut).decode("ascii")
            if len(payload) > self.max_payload:
                entry["truncated"] = len(payload)
        elif payload is not None:
            text = payload if isinstance(payload, str) else repr(payload)
            entry["payload"] = text[: self.max_payload]
        line = json.dumps(entry, ensure_ascii=False, default=repr) + "\n"
        data = line.encode("utf-8")
        try:
            if self._size + len(data) > self.max_bytes and self._size > 0:
                self._rotate()
            with self.path.open("ab") as f:
                f.write(data)
            self._size += len(data)
            self.written += 1
        except OSError as exc:
            log.warning("deadletter_write_failed", path=str(self.path), error=str(exc))

    def _rotate(self) -> None:
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            if self.path.exists():
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._size = 0

    def files(self) -> list[Path]:
        """The current file and its backups that exist, newest first."""
        names = [self.path] + [
            self.path.with_name(f"{self.path.name}.{i}") for i in range(1, self.backups + 1)
        ]
        return [p for p in names if p.exists()]
