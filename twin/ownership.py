"""Which gateway owns which node: an uplink may write only its own gateway's nodes.

The site file names a node's owner with ``gateway:`` (inherited by its subtree, plant/site.py); the site sync
stores it on the twin's node (``twin_nodes.gateway``). Ingest checks each item of a batch against the gateway
the batch came from (its topic, which the broker's ACL ties to the gateway's login) and refuses items of
another gateway's nodes with ``not_owner``, so a misconfigured broker still cannot let one gateway write
another's assets. Nodes without an owner take values from any gateway.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import structlog
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from plant.wire import NOT_OWNER, Diagnosis, Frame, Rejection, UplinkBatch, Value
from twin.errors import StoreError
from twin.store import ApplyResult
from twin.tables import TwinNode

log = structlog.get_logger(__name__)

_KINDS: tuple[Literal["value", "frame", "diagnosis"], ...] = ("value", "frame", "diagnosis")
_ORDER = (*_KINDS, "command")


@dataclass(frozen=True, slots=True)
class Split:
    """A batch cut down to the gateway's own items.

    Args:
        batch: the items the gateway may write (the batch itself when it owns them all).
        refused: ``not_owner`` rejections, indexed in the original batch.
        kept: per kind, the original index of each kept item; None when nothing was cut.
    """

    batch: UplinkBatch
    refused: tuple[Rejection, ...] = ()
    kept: tuple[Sequence[int], Sequence[int], Sequence[int]] | None = None

    def merge(self, result: ApplyResult) -> ApplyResult:
        """The store's result for the cut batch, with indices of the original batch and the refusals."""
        if self.kept is None:
            return result
        moved = tuple(r if r.kind not in _KINDS else  # command reports are not cut: their indexes stand
                      r.model_copy(update={"index": self.kept[_KINDS.index(r.kind)][r.index]})
                      for r in result.rejected)
        rejected = tuple(sorted((*moved, *self.refused), key=lambda r: (_ORDER.index(r.kind), r.index)))
        return replace(result, rejected=rejected)


class Ownership:
    """The owners of the twin's nodes, read from the database at most every ``refresh_s``.

    Args:
        engine: the twin's database.
        refresh_s: how long a read is trusted (a site sync in another process shows after this).
    """

    def __init__(self, engine: Engine, refresh_s: float = 5.0) -> None:
        self.engine = engine
        self.refresh_s = refresh_s
        self._owners: dict[str, str] = {}
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def owners(self) -> dict[str, str]:
        """Node id → owning gateway, for the nodes that have one."""
        with self._lock:
            if time.monotonic() - self._read_at > self.refresh_s:
                self._read()
            return self._owners

    def _read(self) -> None:
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(select(TwinNode.id, TwinNode.gateway).where(TwinNode.gateway.is_not(None)))
                self._owners = {r.id: r.gateway for r in rows}
        except SQLAlchemyError as exc:
            if self._read_at == float("-inf"):  # never read: no batch can be checked, so none is stored
                raise StoreError(f"cannot read the nodes' owners: {str(exc).splitlines()[0]}") from exc
            log.warning("node_owners_unreadable", error=str(exc).splitlines()[0])
        self._read_at = time.monotonic()

    def invalidate(self) -> None:
        """Read the owners again at the next batch (after a site sync)."""
        with self._lock:
            self._read_at = float("-inf")

    def split(self, gateway: str, batch: UplinkBatch) -> Split:
        """Keep the items of nodes ``gateway`` owns or nobody owns; refuse the others with ``not_owner``."""
        owners = self.owners()
        if not owners:
            return Split(batch)
        groups: tuple[Sequence[Value | Frame | Diagnosis], ...] = (batch.values, batch.frames, batch.diagnoses)
        foreign = [[i for i, item in enumerate(items) if owners.get(item.node, gateway) != gateway]
                   for items in groups]
        if not any(foreign):
            return Split(batch)
        refused: tuple[Rejection, ...] = tuple(
            Rejection(kind=kind, index=i, reason=NOT_OWNER,
                      detail=f"node {groups[k][i].node} belongs to gateway {owners[groups[k][i].node]}")
            for k, kind in enumerate(_KINDS) for i in foreign[k]
        )
        out = [set(f) for f in foreign]
        kept = tuple([i for i in range(len(items)) if i not in out[k]] for k, items in enumerate(groups))
        cut = batch.model_copy(update={
            "values": [batch.values[i] for i in kept[0]],
            "frames": [batch.frames[i] for i in kept[1]],
            "diagnoses": [batch.diagnoses[i] for i in kept[2]],
        })
        return Split(cut, refused, (kept[0], kept[1], kept[2]))
