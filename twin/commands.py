"""Setpoint commands: a person asks for a value, the owning gateway writes it, the twin shows what came back.

    request ─► checks (writable, role, type, limits, rate) ─► twin_commands row + audit record, one commit
            └► refused: an audit record ``setpoint.refuse`` with the reason, then the error to the caller
    confirm ─► a second person (two-person properties): pending
    CommandDispatcher ─► publishes pending commands at QoS 1 on ``<root>/<gateway>/cmd/setpoint``: sent
    gateway report (in an uplink batch) ─► applied / rejected / failed / expired, with the value read back

A command is never sent at or after its expiry, and a final command (applied, rejected, failed, expired) is
never sent again, so a platform restart resends only what is still pending or sent and unexpired; the agent
applies each id at most once whatever arrives twice. An unreported command past its expiry and a grace period
is marked expired ("no_report"): the agent's own clock check guarantees it was not applied late, and a report
arriving later still replaces that with what the machine said.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from sqlalchemy import Connection, Engine, select
from sqlalchemy.orm import Session

from plant.errors import MqttError
from plant.mqtt import BrokerUrl, MqttOptions, ThreadedClient
from plant.setpoints import (
    NOT_OWNER,
    NOT_WRITABLE,
    ROLE_TOO_LOW,
    UNCONFIRMED,
    Refusal,
    check_rate,
    check_value,
)
from plant.site import DataType, PropertyDef, Writable
from plant.wire import (
    FINAL_STATES,
    TOPIC_ROOT,
    Command,
    CommandReport,
    CommandState,
    Rejection,
    command_topic,
    now_us,
)
from twin import audit, queries
from twin.auth import Principal, Role
from twin.db import get_or_missing, make_sessionmaker
from twin.errors import Forbidden, InvalidRequest, NotFound
from twin.tables import AssetTypeRecord, SetpointCommand, TwinNode

log = structlog.get_logger(__name__)

REPORT_GRACE_US = 30_000_000  # how long after expiry a report may still come before "no_report"
RESEND_AFTER_US = 5_000_000  # a sent, unexpired, unreported command is published again after this long
OPEN_STATES = (CommandState.PENDING, CommandState.SENT)


class SetpointRefused(InvalidRequest):
    """A setpoint request the checks refuse (422), with the stable reason code."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(f"{refusal.reason}: {refusal.detail}")
        self.reason = refusal.reason


class SetpointForbidden(Forbidden):
    """The caller's role is below the property's least role (403)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(f"{refusal.reason}: {refusal.detail}")
        self.reason = refusal.reason


@dataclass(frozen=True, slots=True)
class SetpointRequest:
    """What a person asks for.

    Args:
        value: the desired value (checked: any JSON value may arrive).
        reason: why, for the audit trail and the logbook.
        expires_s: how long the command may wait; None: the property's default.
    """

    value: Any
    reason: str = ""
    expires_s: float | None = None


def writable_spec(pdef: PropertyDef) -> dict[str, Any] | None:
    """A writable property's rules as stored with its asset type (twin/site_sync.py)."""
    if pdef.writable is None:
        return None
    return {"unit": pdef.unit, "dtype": str(pdef.dtype), **pdef.writable.model_dump(mode="json")}


def rules_of(session: Session, node: TwinNode, prop: str) -> tuple[PropertyDef, Writable]:
    """The property and its write rules; SetpointRefused (not_writable) when it has none."""
    record = session.get(AssetTypeRecord, node.type) if node.type else None
    spec = (record.spec.get("writable") or {}).get(prop) if record is not None else None
    if spec is None:
        raise SetpointRefused(Refusal(NOT_WRITABLE, f"{node.id}.{prop} is not a writable property"))
    spec = dict(spec)
    pdef = PropertyDef(unit=spec.pop("unit", ""), dtype=DataType(spec.pop("dtype", "float")))
    return pdef, Writable.model_validate(spec)


def last_desired(session: Session, node_id: str, prop: str) -> SetpointCommand | None:
    """The newest command that was not refused by the platform or the gateway."""
    c = SetpointCommand
    stmt = (select(c).where(c.node_id == node_id, c.prop == prop,
                            c.state.not_in((CommandState.REJECTED, CommandState.AWAITING_CONFIRMATION)))
            .order_by(c.created_at.desc()).limit(1))
    return session.scalars(stmt).first()


@dataclass(frozen=True, slots=True)
class DesiredVsReported:
    """A writable property's last desired value against its latest measured one.

    Args:
        command: the newest command not refused (``last_desired``), or None.
        reported: the latest measured value, or None when there is none.
        in_sync: the measured value equals the desired one.
    """

    command: SetpointCommand | None
    reported: Any
    in_sync: bool


def desired_vs_reported(session: Session, node_id: str, prop: str) -> DesiredVsReported:
    """Where a property stands: the last desired value's command and the value measured now."""
    cmd = last_desired(session, node_id, prop)
    try:
        reported = queries.property_public(queries.get_property(session, node_id, prop)).value
    except NotFound:
        reported = None
    desired = cmd.value if cmd is not None else None
    in_sync = desired is not None and isinstance(reported, int | float) and abs(float(reported) - desired) < 1e-9
    return DesiredVsReported(cmd, reported, in_sync)


def get_command(session: Session, command_id: str) -> SetpointCommand:
    """One command; NotFound if there is none of that id."""
    return get_or_missing(session, SetpointCommand, command_id, f"no command {command_id!r}")


def request(session: Session, who: Principal, node_id: str, prop: str, req: SetpointRequest,
            now: int | None = None) -> SetpointCommand:
    """Check and store a command (committed, with its audit record); raises with the reason when refused.

    A refusal is recorded in the audit trail (``setpoint.refuse``) before it is raised.
    """
    now = now if now is not None else now_us()
    target = f"setpoint:{node_id}.{prop}"
    try:
        node = session.get(TwinNode, node_id)
        if node is None or node.retired_at is not None:
            raise NotFound(f"no node {node_id!r}")
        pdef, rules = rules_of(session, node, prop)
        if who.role < Role(rules.role):
            raise SetpointForbidden(Refusal(ROLE_TOO_LOW, f"writing {prop} needs the {rules.role} role; "
                                                          f"you are {who.role.value}"))
        if node.gateway is None:
            raise SetpointRefused(Refusal(NOT_OWNER, f"{node_id} has no owning gateway to write through"))
        refusal = check_value(req.value, pdef, rules)
        if refusal is None:
            last = last_desired(session, node_id, prop)
            refusal = check_rate(float(req.value), rules, last.value if last else None,
                                 last.created_at if last else None, now)
        if refusal is not None:
            raise SetpointRefused(refusal)
    except (SetpointRefused, SetpointForbidden) as exc:
        session.rollback()
        audit.record(session, who, "setpoint.refuse", target,
                     after={"value": _jsonable(req.value), "reason": exc.reason, "detail": str(exc)})
        session.commit()
        raise
    expires_s = req.expires_s if req.expires_s is not None else rules.expiry_s
    last = last_desired(session, node_id, prop)
    cmd = SetpointCommand(
        id=secrets.token_hex(12), node_id=node_id, prop=prop, gateway=node.gateway, value=float(req.value),
        previous=last.value if last else None,
        state=CommandState.AWAITING_CONFIRMATION if rules.two_person else CommandState.PENDING,
        actor=who.actor, reason=req.reason, created_at=now, expires_at=now + int(expires_s * 1e6),
        outcome="", detail="",
    )
    session.add(cmd)
    audit.record(session, who, "setpoint.request", target, after=_state(cmd))
    session.commit()
    log.info("setpoint_requested", command=cmd.id, node_id=node_id, prop=prop, value=cmd.value, actor=who.actor)
    return cmd


def confirm(session: Session, who: Principal, command_id: str, now: int | None = None) -> SetpointCommand:
    """A second person confirms a two-person command: it becomes pending (sent next)."""
    now = now if now is not None else now_us()
    cmd = get_command(session, command_id)
    target = f"setpoint:{cmd.node_id}.{cmd.prop}"
    refusal: Refusal | None = None
    node = session.get(TwinNode, cmd.node_id)
    _, rules = rules_of(session, node, cmd.prop) if node is not None else (None, None)
    if cmd.state != CommandState.AWAITING_CONFIRMATION:
        refusal = Refusal(UNCONFIRMED, f"command {command_id} is {cmd.state}, not awaiting confirmation")
    elif who.actor == cmd.actor:
        refusal = Refusal(UNCONFIRMED, "the second person must be someone else than the requester")
    elif rules is not None and who.role < Role(rules.role):
        refusal = Refusal(ROLE_TOO_LOW, f"confirming needs the {rules.role} role; you are {who.role.value}")
    elif now >= cmd.expires_at:
        refusal = Refusal("expired", "the command expired before it was confirmed")
        cmd.state, cmd.outcome, cmd.ended_at = CommandState.EXPIRED, "expired", now
    if refusal is not None:
        audit.record(session, who, "setpoint.refuse", target, after={"command": cmd.id, "reason": refusal.reason,
                                                                      "detail": refusal.detail})
        session.commit()
        raise (SetpointForbidden if refusal.reason == ROLE_TOO_LOW else SetpointRefused)(refusal)
    before = _state(cmd)
    cmd.state, cmd.confirmed_by = CommandState.PENDING, who.actor
    audit.record(session, who, "setpoint.confirm", target, before=before, after=_state(cmd))
    session.commit()
    return cmd


def apply_reports(conn: Connection, gateway: str, reports: list[tuple[int, CommandReport]],
                  now: int | None = None) -> list[Rejection]:
    """Record what the gateway says became of its commands, in the caller's transaction (the batch's own).

    ``reports`` are (index in the batch, report). A report of an unknown command or of another gateway's is
    rejected (kind ``command``, ``not_owner``) and changes nothing; a repeat changes nothing.
    """
    at = now if now is not None else now_us()
    rejected: list[Rejection] = []
    with Session(bind=conn) as session:  # joins the batch's transaction: its commit or rollback is the batch's
        for index, report in reports:
            cmd = session.get(SetpointCommand, report.id)
            if cmd is None or cmd.gateway != gateway:
                log.warning("command_report_refused", gateway_id=gateway, command=report.id, reason=NOT_OWNER)
                rejected.append(Rejection(kind="command", index=index, reason=NOT_OWNER,
                                          detail=f"no command {report.id} of gateway {gateway}"))
                continue
            if cmd.state == report.state and cmd.outcome != "no_report":
                continue
            before = _state(cmd)
            cmd.state, cmd.outcome, cmd.detail = report.state, report.reason, report.detail
            cmd.ended_at = at
            if isinstance(report.value, int | float) and not isinstance(report.value, bool):
                cmd.reported = float(report.value)
            audit.record(session, f"gateway:{gateway}", f"setpoint.{report.state}",
                         f"setpoint:{cmd.node_id}.{cmd.prop}", before=before, after=_state(cmd))
        session.flush()
    return rejected


def to_wire(cmd: SetpointCommand, value_type: DataType = DataType.FLOAT) -> Command:
    """The command as the gateway receives it."""
    value: float | int = int(cmd.value) if value_type is DataType.INT else cmd.value
    return Command(id=cmd.id, gateway=cmd.gateway, node=cmd.node_id, prop=cmd.prop, value=value,
                   issued=cmd.created_at, expires=cmd.expires_at, actor=cmd.actor)


def _state(cmd: SetpointCommand) -> dict[str, Any]:
    return audit.fields(cmd, ("id", "value", "state", "outcome", "detail", "reported", "expires_at", "reason"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, str | int | float | bool) or value is None:
        return value if not isinstance(value, str) else value[:64]
    return type(value).__name__


class Publisher(Protocol):
    """What the dispatcher needs of an MQTT client (plant's ``ThreadedClient``)."""

    def is_connected(self) -> bool:
        """Whether the client is connected now."""

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        """Queue one message; MqttError when it cannot be."""


class CommandDispatcher:
    """Publishes pending commands to their gateways and ends the ones nobody reported in time.

    One per platform process that runs ingest. Each cycle (every ``poll_s``, or at ``wake()``): commands
    pending, or sent long ago without a report, and still unexpired are published at QoS 1 and marked sent;
    open commands past expiry and grace become expired ("no_report"). Final commands are never touched.

    Args:
        engine: the twin's database.
        client: a connected MQTT client with the platform's login (publishes on ``<root>/+/cmd/#``).
        topic_root: the topic root.
        poll_s: seconds between cycles.
        report_grace_us: how long after expiry a report may still come before an open command is expired.
    """

    def __init__(self, engine: Engine, client: Publisher, topic_root: str = TOPIC_ROOT,
                 poll_s: float = 0.1, report_grace_us: int = REPORT_GRACE_US) -> None:
        self.sessions = make_sessionmaker(engine)
        self.report_grace_us = report_grace_us
        self.client = client
        self.topic_root = topic_root
        self.poll_s = poll_s
        self.published = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def connect(
        cls, engine: Engine, broker: BrokerUrl, client_id: str, topic_root: str = TOPIC_ROOT
    ) -> CommandDispatcher:
        """A dispatcher with its own MQTT client (reconnecting by itself) to ``broker`` (its login, TLS and CA
        bundle) as ``client_id`` (a client id in the URL is the ingest workers' and does not apply here)."""
        options = MqttOptions.from_url(broker, client_id, own_id=True, keepalive_s=30, protocol="3.1.1",
                                       persistent=False)
        return cls(engine, ThreadedClient(options, name="command-mqtt").start(), topic_root)

    def start(self) -> CommandDispatcher:
        """Run cycles on a thread until ``stop``."""
        self._thread = threading.Thread(target=self._run, name="command-dispatch", daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        """Run a cycle now (a command was just stored)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop the cycles and the client."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if isinstance(self.client, ThreadedClient):
            self.client.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.cycle()
            except Exception as exc:  # the database away: try again next cycle
                log.warning("command_dispatch_failed", error=str(exc).splitlines()[0] if str(exc) else "")
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def cycle(self, now: int | None = None) -> int:
        """One pass; returns how many commands were published."""
        now = now if now is not None else now_us()
        sent = 0
        with self.sessions() as session:
            c = SetpointCommand
            for cmd in session.scalars(select(c).where(c.state.in_(OPEN_STATES)).order_by(c.created_at)):
                if now >= cmd.expires_at:
                    if now >= cmd.expires_at + self.report_grace_us:
                        before = _state(cmd)
                        cmd.state, cmd.outcome, cmd.ended_at = CommandState.EXPIRED, "no_report", now
                        cmd.detail = "no report from the gateway before the command expired: it was not applied"
                        audit.record(session, "system", "setpoint.expired", f"setpoint:{cmd.node_id}.{cmd.prop}",
                                     before=before, after=_state(cmd))
                    continue
                due = cmd.state == CommandState.PENDING or (cmd.sent_at or 0) + RESEND_AFTER_US <= now
                if due and self.client.is_connected() and self._publish(session, cmd):
                    cmd.state, cmd.sent_at = CommandState.SENT, now
                    sent += 1
            session.commit()
        self.published += sent
        return sent

    def _publish(self, session: Session, cmd: SetpointCommand) -> bool:
        node = session.get(TwinNode, cmd.node_id)
        dtype = DataType.FLOAT
        if node is not None:
            with contextlib.suppress(SetpointRefused):
                dtype = rules_of(session, node, cmd.prop)[0].dtype
        payload = to_wire(cmd, dtype).model_dump_json().encode()
        try:
            self.client.publish(command_topic(cmd.gateway, self.topic_root), payload, qos=1)
        except MqttError as exc:
            log.warning("command_publish_failed", command=cmd.id, error=str(exc))
            return False
        log.info("command_sent", command=cmd.id, gateway_id=cmd.gateway, node_id=cmd.node_id, prop=cmd.prop)
        return True


def is_final(state: str) -> bool:
    """Whether a command in ``state`` has ended."""
    return state in FINAL_STATES
