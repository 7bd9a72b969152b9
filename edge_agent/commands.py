"""Setpoint commands on the gateway: checked again, applied at most once, never late, read back, reported.

    command (QoS 1, <root>/<gateway>/cmd/setpoint)
      → decode → ours? (gateway, node owner) → seen before? (journal: report again, never write again)
      → writable, type, limits, rate (plant/setpoints.py, this gateway's own site file)
      → expired? (own clock + its offset to the platform's, edge_agent/platform_clock.py) → journal "writing"
      (durable) → expired? → write (asyncua, MQTT JSON, Sparkplug NCMD/DCMD) → read back
      → journal the report → report in an uplink batch until the platform acks it (the ack's clock stamp
      keeps the offset estimate fresh)

The journal is a SQLite file in the agent's data directory, written with ``synchronous=FULL`` before the write
reaches the machine. An agent killed after the write and before the report finds the command "writing" at
restart: it reads the value back and reports what it finds (applied, or failed ``interrupted``) and never
writes it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog
from asyncua import Client, ua

from edge_agent.connectors.opcua_session import connect_client, status_of
from edge_agent.connectors.sparkplug import SparkplugDecoder, SparkplugField, encode_command
from edge_agent.errors import ConnectorError
from edge_agent.platform_clock import PlatformClock
from edge_agent.platform_link import PlatformLink
from plant.errors import MqttError, WireError
from plant.mqtt import BrokerUrl, MqttClient, MqttOptions
from plant.setpoints import (
    BAD_STATUS,
    INTERRUPTED,
    NO_READBACK,
    NOT_OWNER,
    NOT_WRITABLE,
    READBACK_DIFFERS,
    Refusal,
    check_expiry,
    check_rate,
    check_value,
)
from plant.site import Binding, DataType, MqttBinding, MqttSource, OpcUaBinding, OpcUaSource, Site
from plant.wire import (
    TOPIC_ROOT,
    Command,
    CommandReport,
    UplinkBatch,
    command_topic,
    decode_ack,
    decode_command,
    now_us,
    uplink_topic,
)

log = structlog.get_logger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS command (
    id TEXT PRIMARY KEY, node TEXT NOT NULL, prop TEXT NOT NULL, value REAL NOT NULL,
    state TEXT NOT NULL, started INTEGER NOT NULL, report TEXT, reported INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS command_prop ON command (node, prop, started);
"""


class WriteFailed(Exception):
    """A write or read-back the machine refused: ``reason`` code and the status code's name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Writer(Protocol):
    """Writes one value to where a binding points, and reads it back."""

    async def write(self, binding: Binding, value: float | int) -> None:
        """Write; raises WriteFailed with the status code."""

    async def read(self, binding: Binding) -> object:
        """The value now at the binding; raises WriteFailed."""


class Journal:
    """Which commands this gateway has begun and what became of them (SQLite, durable before each write)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    def seen(self, command_id: str) -> tuple[str, CommandReport | None] | None:
        """(state, report) of a command begun before, None if new."""
        row = self.db.execute("SELECT state, report FROM command WHERE id = ?", (command_id,)).fetchone()
        if row is None:
            return None
        return row[0], CommandReport.model_validate_json(row[1]) if row[1] else None

    def begin(self, cmd: Command, at: int) -> None:
        """Record that the write starts (committed and synced before it reaches the machine)."""
        self.db.execute("INSERT INTO command (id, node, prop, value, state, started) VALUES (?,?,?,?,?,?)",
                        (cmd.id, cmd.node, cmd.prop, float(cmd.value), "writing", at))

    def finish(self, report: CommandReport, value: float | None = None) -> None:
        """Record the command's end (inserting it when it never began: a refusal)."""
        self.db.execute(
            "INSERT INTO command (id, node, prop, value, state, started, report) VALUES (?,?,?,?,?,?,?) "
            "ON CONFLICT (id) DO UPDATE SET state = excluded.state, report = excluded.report",
            (report.id, report.node, report.prop, value if value is not None else float("nan"), report.state,
             report.at, report.model_dump_json()),
        )

    def last_applied(self, node: str, prop: str) -> tuple[float, int] | None:
        """The value and time of the last command applied to this property."""
        row = self.db.execute("SELECT value, started FROM command WHERE node = ? AND prop = ? AND state = 'applied'"
                              " ORDER BY started DESC LIMIT 1", (node, prop)).fetchone()
        return (float(row[0]), int(row[1])) if row else None

    def interrupted(self) -> list[tuple[str, str, str, float]]:
        """Commands begun and never finished (the agent stopped mid-write): id, node, prop, value."""
        return [tuple(r) for r in self.db.execute("SELECT id, node, prop, value FROM command WHERE state = 'writing'")]

    def unreported(self, limit: int = 100) -> list[CommandReport]:
        """Finished commands whose report the platform has not acknowledged."""
        rows = self.db.execute("SELECT report FROM command WHERE report IS NOT NULL AND reported = 0 "
                               "ORDER BY started LIMIT ?", (limit,))
        return [CommandReport.model_validate_json(r[0]) for r in rows]

    def reported(self, ids: list[str]) -> None:
        """The platform acknowledged these reports."""
        self.db.executemany("UPDATE command SET reported = 1 WHERE id = ?", [(i,) for i in ids])

    def close(self) -> None:
        """Close the file."""
        self.db.close()


class CommandExecutor:
    """Checks and applies the commands of one gateway.

    Args:
        site: this gateway's site model (its own limits are the ones checked).
        gateway: this gateway's id.
        journal: the command journal.
        writer: what writes to the machine.
        clock: this machine's clock corrected by its estimated offset to the platform's (``CommandChannel``
            feeds it the round-trips of its report batches); uncorrected until then.
    """

    def __init__(self, site: Site, gateway: str, journal: Journal, writer: Writer,
                 clock: PlatformClock | None = None) -> None:
        self.site = site
        self.gateway = gateway
        self.journal = journal
        self.writer = writer
        self.clock = clock or PlatformClock()
        self.owners = site.owners()
        self.lock = asyncio.Lock()  # one write at a time: a duplicate waits for the first to end
        self.applied = 0

    def now(self) -> int:
        """This gateway's corrected clock, µs."""
        return self.clock.now()

    async def handle(self, payload: bytes) -> CommandReport | None:
        """One command message; the report to send, or None for an undecodable message (logged)."""
        try:
            cmd = decode_command(payload)
        except WireError as exc:
            log.warning("command_refused", reason="undecodable", error=str(exc))
            return None
        async with self.lock:
            return await self._handle(cmd)

    async def _handle(self, cmd: Command) -> CommandReport:
        seen = self.journal.seen(cmd.id)
        if seen is not None:
            state, report = seen
            log.info("command_repeat_ignored", command=cmd.id, state=state)
            return report or self._report(cmd, "failed", Refusal(INTERRUPTED, "the write is in progress"))
        refusal = self._check(cmd)
        if refusal is not None:
            state = "expired" if refusal.reason == "expired" else "rejected"
            return self._end(cmd, self._report(cmd, state, refusal))
        self.journal.begin(cmd, self.now())
        late = check_expiry(cmd.expires, self.now())  # the journal write took time: look once more
        if late is not None:
            return self._end(cmd, self._report(cmd, "expired", late))
        pdef, _, binding = self.site.writable(cmd.node, cmd.prop)
        try:
            await self.writer.write(binding, int(cmd.value) if pdef.dtype is DataType.INT else float(cmd.value))
            back = await self.writer.read(binding)
        except WriteFailed as exc:
            return self._end(cmd, self._report(cmd, "failed", Refusal(exc.reason, exc.detail)))
        if not _same(back, cmd.value):
            return self._end(cmd, self._report(cmd, "failed", Refusal(READBACK_DIFFERS,
                             f"wrote {cmd.value}, read back {back}"), back))
        self.applied += 1
        return self._end(cmd, self._report(cmd, "applied", None, back))

    def _check(self, cmd: Command) -> Refusal | None:
        if cmd.gateway != self.gateway or self.owners.get(cmd.node) != self.gateway:
            return Refusal(NOT_OWNER, f"{cmd.node} does not belong to gateway {self.gateway}")
        try:
            pdef, rules, _ = self.site.writable(cmd.node, cmd.prop)
        except KeyError:
            return Refusal(NOT_WRITABLE, f"{cmd.node}.{cmd.prop} is not writable on this gateway")
        refusal = check_value(cmd.value, pdef, rules) or check_expiry(cmd.expires, self.now())
        if refusal is None:
            last = self.journal.last_applied(cmd.node, cmd.prop)
            refusal = check_rate(float(cmd.value), rules, last[0] if last else None, last[1] if last else None,
                                 self.now())
        return refusal

    def _report(self, cmd: Command, state: str, refusal: Refusal | None, value: object = None) -> CommandReport:
        shown = value if isinstance(value, int | float | bool | str) else None
        return CommandReport.model_validate({
            "id": cmd.id, "node": cmd.node, "prop": cmd.prop, "state": state,
            "reason": refusal.reason if refusal else "", "detail": refusal.detail[:500] if refusal else "",
            "value": shown, "at": self.now(),
        })

    def _end(self, cmd: Command, report: CommandReport) -> CommandReport:
        self.journal.finish(report, float(cmd.value))
        log.info("command_ended", command=cmd.id, node_id=cmd.node, prop=cmd.prop, state=report.state,
                 reason=report.reason)
        return report

    async def recover(self) -> list[CommandReport]:
        """At start: commands the last run began and never finished are read back, never written again."""
        out = []
        for cid, node, prop, value in self.journal.interrupted():
            cmd = Command(id=cid, gateway=self.gateway, node=node, prop=prop, value=value, issued=0, expires=0)
            try:
                back = await self.writer.read(self.site.writable(node, prop)[2])
            except (WriteFailed, KeyError) as exc:
                back, why = None, str(exc)
            else:
                why = f"read back {back} after the restart"
            if back is not None and _same(back, value):
                report = self._report(cmd, "applied", None, back)
            else:
                report = self._report(cmd, "failed", Refusal(INTERRUPTED, f"the agent stopped during the write; "
                                                                          f"{why}; not written again"), back)
            out.append(self._end(cmd, report))
        return out


def _same(back: object, value: float | int) -> bool:
    return isinstance(back, int | float) and not isinstance(back, bool) and abs(float(back) - value) <= 1e-6 * max(
        1.0, abs(value))


_VARIANTS = {DataType.FLOAT: ua.VariantType.Double, DataType.INT: ua.VariantType.Int32}


class OpcUaWriter:
    """Writes through one asyncua session per OPC-UA source, opened when first needed.

    Args:
        site: where the sources are.
        passwords: a source's password by source id.
    """

    def __init__(self, site: Site, passwords: dict[str, str | None] | None = None) -> None:
        self.site = site
        self.passwords = passwords or {}
        self.clients: dict[str, Client] = {}

    async def _client(self, source_id: str) -> Client:
        client = self.clients.get(source_id)
        if client is None:
            source = self.site.sources[source_id]
            assert isinstance(source, OpcUaSource)
            try:
                client = await connect_client(source, self.passwords.get(source_id))
            except ConnectorError as exc:
                raise WriteFailed("unreachable", str(exc)) from exc
            self.clients[source_id] = client
        return client

    async def write(self, binding: Binding, value: float | int) -> None:
        """Write with the variable's own type; a Bad or Uncertain status raises WriteFailed."""
        if not isinstance(binding, OpcUaBinding):
            raise WriteFailed(NOT_WRITABLE, "only OPC-UA bindings are written by this writer")
        client = await self._client(binding.source)
        node = client.get_node(binding.node_id)
        try:
            vtype = await node.read_data_type_as_variant_type()
            raw = (value - binding.offset) / binding.scale
            native = round(raw) if vtype not in (ua.VariantType.Double, ua.VariantType.Float) else raw
            dv = ua.DataValue(ua.Variant(native, vtype))
            (status,) = await client.uaclient.write_attributes([node.nodeid], [dv], ua.AttributeIds.Value)
        except (OSError, TimeoutError, ua.UaError) as exc:
            self.clients.pop(binding.source, None)
            raise WriteFailed(BAD_STATUS, f"write failed: {exc}") from exc
        if not status.is_good():
            raise WriteFailed(BAD_STATUS, f"the server refused the write: {status_of(status.value)[1]}")

    async def read(self, binding: Binding) -> object:
        """The value at the binding, in the property's unit."""
        if not isinstance(binding, OpcUaBinding):
            raise WriteFailed(NOT_WRITABLE, "only OPC-UA bindings are read by this writer")
        client = await self._client(binding.source)
        try:
            raw = await client.get_node(binding.node_id).read_value()
        except (OSError, TimeoutError, ua.UaError) as exc:
            self.clients.pop(binding.source, None)
            raise WriteFailed(BAD_STATUS, f"read back failed: {exc}") from exc
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return raw * binding.scale + binding.offset
        return raw

    async def close(self) -> None:
        """Close the sessions."""
        for client in self.clients.values():
            try:
                await client.disconnect()
            except Exception as exc:
                log.debug("opcua_writer_disconnect_failed", error=str(exc))
        self.clients.clear()


class MqttWriter:
    """Writes a property bound to an MQTT broker and reads it back from what the device sends next.

    * plain JSON: ``{command_field: value}`` on the binding's ``command_topic`` at QoS 1 (the broker's PUBACK
      awaited), read back from the binding's telemetry topic;
    * Sparkplug B: NCMD (a metric of the edge node) or DCMD (a metric of one of its devices) at QoS 0, as the
      specification requires of commands, read back from the next NDATA/DDATA (or birth) carrying the metric;
      data that names the metric only by an alias unknown yet makes it ask the edge node for a rebirth.

    The read-back waits for the written value; a device that sends another value until ``readback_s`` has
    passed is reported with the last one it sent (``readback_differs``), one that sends nothing ``no_readback``.

    Args:
        site: where the sources are.
        passwords: a source's password by source id.
        readback_s: how long to wait for the device to send the written value.
    """

    def __init__(self, site: Site, passwords: dict[str, str | None] | None = None, readback_s: float = 10.0) -> None:
        self.site = site
        self.passwords = passwords or {}
        self.readback_s = readback_s
        self._pending: _Readback | None = None  # subscribed before the write

    async def _client(
        self, binding: MqttBinding, filters: list[str], got: asyncio.Queue[tuple[str, bytes]]
    ) -> MqttClient:
        source = self.site.sources[binding.source]
        if not isinstance(source, MqttSource) or source.url is None:
            raise WriteFailed(NOT_WRITABLE, f"source {binding.source} has no broker URL to write to")
        url = BrokerUrl.parse(source.url)
        options = MqttOptions(
            host=url.host, port=url.port, client_id=f"ft-write-{secrets.token_hex(4)}", tls=url.tls,
            ca_file=source.ca_file or url.ca_file, username=source.username or url.username,
            password=self.passwords.get(binding.source) if source.username else url.password, keepalive_s=30,
            timeout_s=5.0, protocol="3.1.1", persistent=False,
        )  # fmt: skip

        def on_publish(topic: bytes, payload: bytes, qos: int, mid: int, _dup: bool) -> None:
            if qos:
                client.ack(mid, qos)
            got.put_nowait((topic.decode(errors="replace"), payload))

        client = MqttClient(options, on_publish)
        try:
            await client.connect()
        except MqttError as exc:
            raise WriteFailed("unreachable", f"MQTT {url.redacted()}: {exc}") from exc
        with contextlib.suppress(MqttError):  # no read-back then: reported as such, the write still goes
            await client.subscribe(filters)
        return client

    async def _readback(self, binding: MqttBinding, expected: float | int | None) -> _Readback:
        """A client subscribed to where the device answers, before anything is written."""
        got: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        if binding.metric and binding.device:
            decoder = SparkplugDecoder(binding.source, [SparkplugField(binding.device, binding.metric, "", "")])
            return _Readback(await self._client(binding, decoder.filters(), got), got, expected, decoder)
        if binding.topic is None:
            raise WriteFailed(NOT_WRITABLE, "the binding names no topic to read back from")
        return _Readback(await self._client(binding, [binding.topic], got), got, expected, None)

    async def write(self, binding: Binding, value: float | int) -> None:
        """Publish the command (QoS 1 for JSON, 0 for Sparkplug) and wait until the broker took it (or it is sent)."""
        if not isinstance(binding, MqttBinding):
            raise WriteFailed(NOT_WRITABLE, "only MQTT bindings are written by this writer")
        raw = (value - binding.offset) / binding.scale
        native: float | int = round(raw) if isinstance(value, int) and float(raw).is_integer() else raw
        if binding.metric and binding.device:
            topic, payload = encode_command(binding.device, binding.metric, native)
            qos = 0
        elif binding.command_topic is not None:
            topic, payload, qos = binding.command_topic, json.dumps({binding.command_field: native}).encode(), 1
        else:
            raise WriteFailed(NOT_WRITABLE, "a written MQTT binding needs a command_topic (JSON) or a metric")
        self._close()
        self._pending = await self._readback(binding, value)
        try:
            await self._pending.client.publish_acked(topic, payload, qos, timeout_s=10.0)
        except MqttError as exc:
            self._close()
            raise WriteFailed(BAD_STATUS, f"the broker did not take the command: {exc}") from exc

    async def read(self, binding: Binding) -> object:
        """The written value once the device sends it, else the last value it sent within ``readback_s``."""
        if not isinstance(binding, MqttBinding):
            raise WriteFailed(NOT_WRITABLE, "only MQTT bindings are read back by this writer")
        pending, self._pending = self._pending, None
        if pending is None:  # a read without a write (after a restart): the next value the device sends
            pending = await self._readback(binding, None)
        try:
            last = await pending.wait(binding, self.readback_s)
        finally:
            pending.close()
        if last is None:
            where = binding.topic or f"{binding.device} {binding.metric}"
            raise WriteFailed(NO_READBACK, f"no value from {where} within {self.readback_s:g} s")
        return last

    def _close(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.close()


@dataclass
class _Readback:
    """A subscription waiting for a device's answer to one write."""

    client: MqttClient
    got: asyncio.Queue[tuple[str, bytes]]
    expected: float | int | None
    decoder: SparkplugDecoder | None

    async def wait(self, binding: MqttBinding, timeout_s: float) -> float | None:
        """The expected value when it comes; else the last value seen (None: none) when ``timeout_s`` passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last: float | None = None
        while (left := deadline - loop.time()) > 0:
            try:
                topic, payload = await asyncio.wait_for(self.got.get(), left)
            except TimeoutError:
                break
            for raw in self._values(topic, payload, binding):
                last = raw * binding.scale + binding.offset
                if self.expected is None or _same(last, self.expected):
                    return last
        return last

    def _values(self, topic: str, payload: bytes, binding: MqttBinding) -> list[float]:
        if self.decoder is None:
            found = [_json_value(payload, binding.path)]
        else:
            readings, _ = self.decoder.decode(topic, payload, now_us())
            for cmd_topic, cmd in self.decoder.commands:  # a rebirth request: aliases not known yet
                self.client.publish(cmd_topic, cmd, qos=0)
            self.decoder.commands.clear()
            found = [r.raw for r in readings]
        return [float(v) for v in found if isinstance(v, int | float) and not isinstance(v, bool)]

    def close(self) -> None:
        """Drop the connection (a clean session: the broker forgets it)."""
        self.client.close()


def _json_value(payload: bytes, path: str | None) -> object:
    try:
        doc: object = json.loads(payload)
    except ValueError:
        return None
    for part in (path or "").split(".") if path else ():
        doc = doc.get(part) if isinstance(doc, dict) else None
    return doc


class Writers:
    """The writer for each kind of binding: OPC-UA through asyncua, MQTT (JSON and Sparkplug B) through plant.mqtt."""

    def __init__(self, site: Site, passwords: dict[str, str | None] | None = None) -> None:
        self.opcua = OpcUaWriter(site, passwords)
        self.mqtt = MqttWriter(site, passwords)

    def _for(self, binding: Binding) -> Writer:
        return self.opcua if isinstance(binding, OpcUaBinding) else self.mqtt

    async def write(self, binding: Binding, value: float | int) -> None:
        """Write through the binding's writer."""
        await self._for(binding).write(binding, value)

    async def read(self, binding: Binding) -> object:
        """Read back through the binding's writer."""
        return await self._for(binding).read(binding)

    async def close(self) -> None:
        """Close the OPC-UA sessions."""
        await self.opcua.close()


def report_payload(gateway: str, batch: str, reports: list[CommandReport], sent_us: int) -> bytes:
    """An uplink batch carrying only command reports (none: a clock probe), as JSON."""
    commands = [r.model_dump(mode="json") for r in reports]
    return UplinkBatch(gateway=gateway, batch=batch, sent=sent_us, commands=commands).model_dump_json().encode()


class CommandChannel:
    """The executor on the platform link: commands in, reports out (in uplink batches) until acknowledged.

    The acks of the report batches carry the platform's clock: their round-trips give the executor's clock its
    offset (``edge_agent.platform_clock``). With no report to send for ``probe_s``, an empty report batch goes
    out to keep the estimate fresh; a command that arrives before the first estimate waits for it (the
    platform's expiry is judged on the platform's time, or not at all).

    Args:
        executor: checks and applies commands.
        link: the platform link (subscribed to ``command_topic(gateway)``).
        topic_root: the topic root.
        resend_s: how often unacknowledged reports are published again (and the clock probed while unknown).
        probe_s: how often the clock is probed once known.
    """

    def __init__(self, executor: CommandExecutor, link: PlatformLink, topic_root: str = TOPIC_ROOT,
                 resend_s: float = 2.0, probe_s: float = 30.0) -> None:
        self.executor = executor
        self.link = link
        self.topic = command_topic(executor.gateway, topic_root)
        self.uplink = uplink_topic(executor.gateway, topic_root)
        self.resend_s = resend_s
        self.probe_s = probe_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._sent: dict[str, list[str]] = {}
        self._clock_known = asyncio.Event()
        self._last_publish = -1e9  # monotonic

    def on_message(self, topic: str, payload: bytes) -> bool:
        """Take a command, or the ack of a report batch; False for anything else (the uplink's acks)."""
        if topic == self.topic:
            task = asyncio.get_running_loop().create_task(self._command(payload))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return True
        if b'"cmd-' in payload:
            try:
                ack = decode_ack(payload)
            except WireError:
                return False
            ids = self._sent.pop(ack.batch, None)
            if ids is not None:
                self.executor.clock.answered(ack.batch, ack.at)
                if self.executor.clock.known:
                    self._clock_known.set()
                if ack.stored:
                    self.executor.journal.reported(ids)
                return True
        return False

    async def _command(self, payload: bytes) -> None:
        if not self._clock_known.is_set():
            log.info("command_waits_for_platform_clock")
            await self._clock_known.wait()
        try:
            report = await self.executor.handle(payload)
        except Exception:  # a bug must not end the channel: the command is in the journal or was never begun
            log.exception("command_handling_failed")
            return
        if report is not None:
            self._publish([report])

    def _publish(self, reports: list[CommandReport]) -> None:
        batch = "cmd-" + (reports[0].id[:40] if reports else "probe") + "-" + secrets.token_hex(4)
        sent = self.executor.clock.sent(batch)
        body = report_payload(self.executor.gateway, batch, reports, sent)
        try:
            self.link.publish(self.uplink, body)
        except ConnectorError as exc:
            log.info("command_report_waiting_for_link", error=str(exc))
            return
        self._sent[batch] = [r.id for r in reports]
        self._last_publish = time.monotonic()

    async def run(self) -> None:
        """Finish what a previous run began, then publish unacknowledged reports every ``resend_s``, and an
        empty report batch when the clock needs a round-trip."""
        await self.executor.recover()
        while True:
            known = self._clock_known.is_set()
            since = time.monotonic() - self._last_publish
            if self.link.connected.is_set() and since >= (self.resend_s if known else min(self.resend_s, 1.0)):
                reports = self.executor.journal.unreported()
                if reports or since >= (self.probe_s if known else 0):
                    self._publish(reports)
            await asyncio.sleep(self.resend_s if known else 0.05)  # unknown: probe as soon as the link is up
