"""One uplink message, from bytes to its end: stored (wholly or with rejected items), or dead-lettered.

``Intake.handle(topic, payload)`` never raises. In order:

1. ``twin.uplink_checks.check_message``: size and topic, before parsing (too large → dead letter, unparsed);
2. decode, then ``check_envelope``: gateway id and batch id, and the gateway is the topic's;
3. ``screen``: items no column can hold are rejected with a code, the others go on;
4. the sender's budget (``twin.budget``: over it, the whole batch is refused ``over_budget`` with a
   ``retry_after``) and its ownership (``twin.ownership``: items of another gateway's nodes are ``not_owner``);
5. ``TwinStore.apply`` (the twin's own validation, then one transaction);
6. the ``Ack`` to publish, stamped with the platform's clock when the batch carries the ``commands`` key (the
   agent's command channel estimates its clock offset from these round-trips: ``edge_agent.platform_clock``).

An ingest worker hands the messages in hand to ``handle_many``: each is checked as above and the batches are
stored together (``TwinStore.apply_many``, one commit); a group that fails is stored batch by batch, so each
ends as ``handle`` would end it. A batch with the ``commands`` key is stored alone, its command reports in the
same transaction as its values.

A database that fails (down, timed out) is answered ``stored: false``: the agent resends later. A message the
database refuses for its content, or that meets a bug, is dead-lettered with the reason; the agent is then told
each item is held as a dead letter, so it stops resending what would fail again, and nothing is lost: the
dead letter keeps the payload for ``factory-twin ingest replay``. Ingest workers (``twin.ingest``) and the
replay command both go through here.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Literal, NamedTuple

import structlog
from sqlalchemy import Connection

from plant.errors import WireError
from plant.wire import (
    OVER_BUDGET,
    Ack,
    CommandReport,
    Rejection,
    UplinkBatch,
    command_reports,
    decode_batch,
    now_us,
    topic_gateway,
)
from twin.budget import GatewayBudget
from twin.commands import apply_reports
from twin.dead_letters import DeadLetters, Row
from twin.errors import StoreError, StoreRefused
from twin.ownership import Ownership, Split
from twin.store import ApplyResult, TwinStore
from twin.uplink_checks import (
    UNDECODABLE,
    Refused,
    Screened,
    WireLimits,
    check_envelope,
    check_message,
    screen,
)

log = structlog.get_logger(__name__)

STORE_REFUSED = "store_refused"  # the database refused the batch's content
INTERNAL_ERROR = "internal_error"  # a bug met on the way
WORKER_DIED = "worker_died"  # the message a worker held when it died
DEAD_LETTERED = "dead_lettered"  # rejection code of each item of a dead-lettered batch
LOG_EVERY_S = 1.0  # at most one log line per dead-letter reason this often
GROUP_ITEMS = 20_000  # items stored in one transaction by handle_many (one commit for several batches)

Listener = Callable[[UplinkBatch, ApplyResult], None]


class _Checked(NamedTuple):
    """A message whose batch passed the checks before any I/O."""

    topic: str
    data: bytes
    batch: UplinkBatch


@dataclass
class IngestStats:
    """Counters of one ingestor since it started.

    Args:
        batches: batches stored.
        values: values newly stored.
        accepted: items newly stored (values, frames, diagnoses).
        duplicates: items already stored, received again.
        rejected: refused items, by reason code.
        undecodable: payloads that were not an uplink batch.
        failed: batches the database failed to store (answered stored=False).
        nodes_updated: distinct nodes whose latest state changed.
        dead_letters: messages dead-lettered, by reason.
        worker_restarts: ingest workers restarted after their thread died.
        messages: uplink messages that ended (stored, answered or dead-lettered) and were acknowledged.
    """

    batches: int = 0
    values: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    undecodable: int = 0
    failed: int = 0
    nodes_updated: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    worker_restarts: int = 0
    messages: int = 0

    @property
    def rejected_total(self) -> int:
        """All refused items and payloads."""
        return sum(self.rejected.values()) + self.undecodable


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one message ended.

    Args:
        ack: the answer to publish on the gateway's ack topic (None: nobody to answer).
        stored: the batch was applied to the twin.
        dead_letter: the dead-letter reason, when it was dead-lettered (or would have been, for a replay).
        detail: what was wrong, for people.
    """

    ack: Ack | None
    stored: bool = False
    dead_letter: str | None = None
    detail: str = ""


class Intake:
    """Decode, check, store and answer uplink messages; counts what happened. Thread-safe.

    Args:
        store: the twin store.
        dead_letters: where messages that cannot be stored go.
        topic_root: root of the uplink topics.
        limits: message size and string limits.
        budget: values per second each gateway may send; None: no limit (a replay).
        ownership: which gateway owns which node; read from the store's database by default.
    """

    def __init__(self, store: TwinStore, dead_letters: DeadLetters, topic_root: str,
                 limits: WireLimits | None = None, *, budget: GatewayBudget | None = None,
                 ownership: Ownership | None = None) -> None:
        self.store = store
        self.budget = budget or GatewayBudget(0, 0)
        self.ownership = ownership or Ownership(store.engine)
        self.dead_letters = dead_letters
        self.topic_root = topic_root
        self.limits = limits or WireLimits()
        self.listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._stats = IngestStats()
        self._rejected: Counter[str] = Counter()
        self._dead: Counter[str] = Counter()
        self._nodes: set[str] = set()
        self._logged_at: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    def handle(self, topic: str, payload: bytes | bytearray, record: bool = True,
               deferred: list[Row] | None = None) -> Outcome:
        """The end of one message; with ``record`` false (a replay) nothing is dead-lettered again.

        With ``deferred``, a dead letter that needs no answer is added there instead of written: the caller
        writes them together (``flush``) before acknowledging their messages, one transaction for many.
        """
        checked = self._check(topic, bytes(payload), record, deferred)
        if isinstance(checked, Outcome):
            return checked
        return self._store(topic, checked.data, checked.batch, record)

    def handle_many(self, messages: Sequence[tuple[str, bytes | bytearray]], deferred: list[Row],
                    most_items: int = GROUP_ITEMS) -> list[Outcome]:
        """The ends of several messages, as ``handle`` gives each, with their batches stored together.

        Batches that pass the checks are stored in transactions of up to ``most_items`` items (one commit for
        several batches); when such a transaction fails, each of its batches is stored alone, so one batch the
        database refuses ends as ``handle`` would end it and the others are stored.
        """
        outcomes: dict[int, Outcome] = {}
        ready: list[tuple[int, _Checked, Split, Screened]] = []
        for i, (topic, payload) in enumerate(messages):
            checked = self._check(topic, bytes(payload), True, deferred)
            if isinstance(checked, Outcome):
                outcomes[i] = checked
                continue
            batch = checked.batch
            if "commands" in batch.model_fields_set:  # an agent that executes commands: stored on its own
                outcomes[i] = self._store(topic, checked.data, batch, True)
                continue
            wait = self.budget.take(batch.gateway, len(batch))
            if wait is not None:
                outcomes[i] = self._over_budget(batch.gateway, batch, wait)
            else:
                try:
                    split = self.ownership.split(batch.gateway, batch)
                    ready.append((i, checked, split, screen(split.batch, self.limits)))
                except Exception:  # a bug on the way: stored alone, where it ends as handle ends it
                    outcomes[i] = self._apply(topic, checked.data, batch, True)
        for group in _groups(ready, most_items):
            try:
                results = self.store.apply_many([(screened.batch, screened) for _i, _c, _s, screened in group])
            except Exception:
                for i, checked, _split, _screened in group:
                    outcomes[i] = self._apply(checked.topic, checked.data, checked.batch, True)
                continue
            for (i, checked, split, _screened), result in zip(group, results, strict=True):
                outcomes[i] = self._stored(checked.batch, split, split.merge(result))
        return [outcomes[i] for i in range(len(messages))]

    def _check(self, topic: str, data: bytes, record: bool, deferred: list[Row] | None) -> Outcome | _Checked:
        """The checks before any I/O: the decoded batch, or the end of a message refused as a whole."""
        batch: UplinkBatch | None = None
        try:
            check_message(topic, len(data), self.topic_root, self.limits)
            try:
                batch = decode_batch(data)
            except WireError as exc:
                raise Refused(UNDECODABLE, str(exc)) from None
            check_envelope(topic, batch, self.topic_root)
        except Refused as refused:  # nobody to answer: the claimed gateway may not be the sender
            return self._refused(refused.reason, refused.detail, topic, data, batch, record, deferred)
        except Exception as exc:  # a bug in decoding: the message still ends
            log.exception("uplink_check_failed", topic=topic[:200])
            return self._refused(INTERNAL_ERROR, _describe(exc), topic, data, batch, record, deferred)
        return _Checked(topic, data, batch)

    def _store(self, topic: str, data: bytes, batch: UplinkBatch, record: bool) -> Outcome:
        sender = batch.gateway  # the topic's gateway (check_envelope), which the broker's ACL ties to its login
        wait = self.budget.take(sender, len(batch))
        if wait is not None:
            return self._over_budget(sender, batch, wait)
        outcome = self._apply(topic, data, batch, record)
        if outcome.ack is not None and "commands" in batch.model_fields_set:  # an agent that executes commands:
            outcome = replace(outcome, ack=outcome.ack.model_copy(update={"at": now_us()}))  # its clock offset
        return outcome

    def _apply(self, topic: str, data: bytes, batch: UplinkBatch, record: bool) -> Outcome:
        """Store one batch within its budget: stored, answered stored=false, or dead-lettered."""
        sender = batch.gateway
        try:
            split = self.ownership.split(sender, batch)
            screened = screen(split.batch, self.limits)
            reports = command_reports(screened.batch)  # what became of the sender's setpoint commands
            also = partial(_reports, sender, reports) if reports else None
            result = split.merge(self.store.apply(screened.batch, screened=screened, also=also))
        except StoreRefused as exc:
            return self._dead_letter(STORE_REFUSED, str(exc), topic, data, batch, record)
        except StoreError as exc:
            with self._lock:
                self._stats.failed += 1
            return Outcome(Ack(gateway=batch.gateway, batch=batch.batch, stored=False, error=str(exc)))
        except Exception as exc:
            log.exception("batch_store_failed", gateway_id=batch.gateway, batch=batch.batch)
            return self._dead_letter(INTERNAL_ERROR, _describe(exc), topic, data, batch, record)
        return self._stored(batch, split, result)

    def _stored(self, batch: UplinkBatch, split: Split, result: ApplyResult) -> Outcome:
        """Count a stored batch, tell the listeners, and answer it."""
        self._count(result)
        log.info("batch_stored", gateway_id=batch.gateway, batch=batch.batch, accepted=result.accepted,
                 duplicates=result.duplicates, rejected=len(result.rejected), changes=len(result.changes))
        for listener in self.listeners:
            try:
                listener(split.batch, result)
            except Exception:
                log.exception("ingest_listener_failed", listener=repr(listener))
        return Outcome(result.ack(batch), stored=True)

    def _over_budget(self, sender: str, batch: UplinkBatch, wait: float) -> Outcome:
        """Refuse the whole batch before any database work: the gateway sends it again after ``wait``."""
        retry = round(wait, 3)
        if self.budget.should_report(sender):  # a flood must not flood the log as well
            log.warning("batches_over_budget", gateway_id=sender, batch=batch.batch, items=len(batch),
                        retry_after=retry, refused_so_far=self.budget.refused_batches().get(sender, 0))
        return Outcome(Ack(gateway=batch.gateway, batch=batch.batch, stored=False, code=OVER_BUDGET, retry_after=retry,
                           error=f"over budget of {self.budget.rate:g} values/s: send again in {retry:g} s"))

    def _refused(self, reason: str, detail: str, topic: str, data: bytes, batch: UplinkBatch | None,
                 record: bool, deferred: list[Row] | None) -> Outcome:
        """A message refused as a whole: dead-lettered, not answered (the claimed gateway may not be the sender)."""
        self._count_dead(reason, detail, topic, len(data))
        if record:
            row = self.dead_letters.row(reason, detail, topic, data, self._claimed(topic, batch))
            if deferred is not None:
                deferred.append(row)
            else:
                self.dead_letters.write([row])
        return Outcome(None, dead_letter=reason, detail=detail)

    def flush(self, deferred: list[Row]) -> None:
        """Write the dead letters ``handle`` deferred."""
        self.dead_letters.write(deferred)
        deferred.clear()

    def _claimed(self, topic: str, batch: UplinkBatch | None) -> str:
        return batch.gateway if batch is not None else topic_gateway(topic, self.topic_root) or ""

    def _count_dead(self, reason: str, detail: str, topic: str, size: int) -> None:
        """Count one dead letter; log it, at most once a second per reason (a flood must not flood the log)."""
        now = time.monotonic()
        with self._lock:
            self._dead[reason] += 1
            if reason == UNDECODABLE:
                self._stats.undecodable += 1
            quiet = now - self._logged_at.get(reason, -LOG_EVERY_S) < LOG_EVERY_S
            if quiet:
                self._unlogged[reason] += 1
                return
            self._logged_at[reason] = now
            unlogged = self._unlogged.pop(reason, 0)
        log.warning("uplink_dead_lettered", reason=reason, detail=detail[:300], topic=topic[:200], size=size,
                    **({"more_since_last_logged": unlogged} if unlogged else {}))

    def _dead_letter(self, reason: str, detail: str, topic: str, data: bytes, batch: UplinkBatch,
                     record: bool) -> Outcome:
        """A decoded batch that cannot be stored: dead-lettered, and the agent told each item is held."""
        self._count_dead(reason, detail, topic, len(data))
        if not record:
            return Outcome(None, dead_letter=reason, detail=detail)
        dead_id = self.dead_letters.record(reason, detail, topic, data, batch.gateway)
        if dead_id is None:  # not kept: the agent must send it again
            return Outcome(Ack(gateway=batch.gateway, batch=batch.batch, stored=False, error=detail[:500]),
                           dead_letter=reason, detail=detail)
        return Outcome(_held_ack(batch, dead_id, detail), dead_letter=reason, detail=detail)

    def _count(self, result: ApplyResult) -> None:
        with self._lock:
            s = self._stats
            s.batches += 1
            s.values += result.values_accepted
            s.accepted += result.accepted
            s.duplicates += result.duplicates
            self._rejected.update(r.reason for r in result.rejected)
            self._nodes.update(result.nodes_changed)

    def ended(self, messages: int = 1) -> None:
        """Count messages acknowledged to the broker."""
        with self._lock:
            self._stats.messages += messages

    def worker_restarted(self) -> None:
        """Count one ingest worker restarted after its thread died."""
        with self._lock:
            self._stats.worker_restarts += 1

    def stats(self) -> IngestStats:
        """A copy of the counters."""
        with self._lock:
            s = self._stats
            return IngestStats(s.batches, s.values, s.accepted, s.duplicates, dict(self._rejected),
                               s.undecodable, s.failed, len(self._nodes), dict(self._dead), s.worker_restarts,
                               s.messages)


def _groups(ready: list[tuple[int, _Checked, Split, Screened]],
            most_items: int) -> Iterator[list[tuple[int, _Checked, Split, Screened]]]:
    """``ready`` in runs of at most ``most_items`` items (a larger batch alone)."""
    group: list[tuple[int, _Checked, Split, Screened]] = []
    items = 0
    for entry in ready:
        size = len(entry[3].batch)
        if group and items + size > most_items:
            yield group
            group, items = [], 0
        group.append(entry)
        items += size
    if group:
        yield group


def _held_ack(batch: UplinkBatch, dead_id: int, detail: str) -> Ack:
    """Every item answered as held in dead letter ``dead_id``: the agent stops sending what would fail again."""
    why = f"batch kept as dead letter {dead_id} for replay: {detail[:200]}"
    kinds: tuple[tuple[Literal["value", "frame", "diagnosis", "command"], list[Any]], ...] = (
        ("value", batch.values), ("frame", batch.frames), ("diagnosis", batch.diagnoses), ("command", batch.commands))
    rejected = [Rejection(kind=kind, index=i, reason=DEAD_LETTERED, detail=why)
                for kind, items in kinds for i in range(len(items))]
    return Ack(gateway=batch.gateway, batch=batch.batch, stored=True, rejected=rejected)


def _reports(gateway: str, reports: list[tuple[int, CommandReport]], conn: Connection, now: int) -> list[Rejection]:
    return apply_reports(conn, gateway, reports, now)


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:500]
