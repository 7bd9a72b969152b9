"""The agent judges a command's expiry on the platform's time: its own clock corrected by the offset it
estimates from the round-trips of its report batches (the platform stamps their acks with its clock)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from edge_agent.commands import CommandChannel, CommandExecutor, Journal
from edge_agent.platform_clock import PlatformClock
from edge_agent.platform_link import PlatformLink
from plant.mqtt import BrokerUrl
from plant.site import Binding, parse_site
from plant.wire import Command, ack_topic, command_topic, now_us
from tests.edge.conftest import AckResponder
from tests.edge.setpoint_plant import SPEED_ON_UA, pump_site
from tests.mqtt_peer import MqttPeer

UA = 'ua: {kind: opcua, endpoint: "opc.tcp://127.0.0.1:4840"}'


class Device:
    """The machine: takes each write and gives it back (the agent's writers are tested against real servers)."""

    def __init__(self) -> None:
        self.writes: list[float | int] = []

    async def write(self, _binding: Binding, value: float | int) -> None:
        self.writes.append(value)

    async def read(self, _binding: Binding) -> object:
        return self.writes[-1] if self.writes else None


def test_the_estimate_is_the_narrowest_round_trip_and_never_behind_the_platform() -> None:
    wall, steady = [1_000_000_000], [7]
    clock = PlatformClock(clock=lambda: wall[0], monotonic=lambda: steady[0])

    def elapse(us: int) -> None:
        wall[0] += us
        steady[0] += us

    assert (clock.known, clock.now()) == (False, 1_000_000_000)  # no estimate: this machine's clock
    for batch, rtt, platform in (("a", 400_000, 5_000_150_000), ("b", 20_000, 5_001_010_000)):
        clock.sent(batch)
        elapse(rtt)
        clock.answered(batch, platform)
        elapse(1_000_000 - rtt)
    # "b" was answered at most 20 ms after it left, and 980 ms have passed since: the upper end is taken
    assert clock.now() == 5_001_010_000 + 1_000_000
    clock.answered("unknown", 9)  # an ack of nothing sent here: ignored
    before = clock.now()
    wall[0] -= 3_600_000_000  # this machine's clock set back an hour: the platform's time goes on
    elapse(500_000)
    assert clock.now() == before + 500_000
    assert clock.offset_us() == clock.now() - wall[0]


@pytest.mark.mosquitto
@pytest.mark.parametrize("skew_s", [-3600, 3600])
def test_a_skewed_agent_refuses_an_expired_command_and_applies_a_fresh_one(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str, responder: AckResponder, skew_s: int
) -> None:
    asyncio.run(_skewed(tmp_path, mqtt_broker, topic_prefix, responder, skew_s))


async def _skewed(tmp_path: Path, broker: tuple[str, int], gateway: str, responder: AckResponder,
                  skew_s: int) -> None:
    host, port = broker
    device = Device()
    clock = PlatformClock(clock=lambda: now_us() + skew_s * 1_000_000)  # this gateway's clock is an hour off
    executor = CommandExecutor(parse_site(pump_site(gateway, UA, SPEED_ON_UA)), gateway, Journal(tmp_path / "c.db"),
                               device, clock)
    link = PlatformLink(BrokerUrl.parse(f"mqtt://{host}:{port}"), f"agent-{gateway}", [ack_topic(gateway)],
                        lambda _t, _p: None)
    channel = CommandChannel(executor, link, resend_s=0.2)
    link.subscribe(channel.topic)
    link.on_message = lambda topic, payload: channel.on_message(topic, payload) and None
    await link.start()
    run = asyncio.create_task(channel.run())
    try:
        for _ in range(200):  # the first round-trip: the command topic is subscribed by then (same connection)
            if clock.known:
                break
            await asyncio.sleep(0.05)
        now = now_us()  # the platform's clock
        _send(host, port, gateway, Command(id="stale001", gateway=gateway, node="p1", prop="speed", value=700.0,
                                           issued=now - 65_000_000, expires=now - 5_000_000))
        _send(host, port, gateway, Command(id="fresh001", gateway=gateway, node="p1", prop="speed", value=900.0,
                                           issued=now, expires=now + 30_000_000))
        for _ in range(200):
            states = {r.id: r.state for r in responder.reports}
            if len(states) == 2:
                break
            await asyncio.sleep(0.05)
        assert states == {"stale001": "expired", "fresh001": "applied"}
        assert device.writes == [900.0]
        assert abs(clock.now() - now_us()) < 1_000_000  # corrected to within the round-trip
    finally:
        run.cancel()
        await link.stop()


def _send(host: str, port: int, gateway: str, cmd: Command) -> None:
    with MqttPeer(host, port, client_id=f"platform-{cmd.id}-{gateway}") as c:
        c.publish(command_topic(gateway), json.dumps(cmd.model_dump()))
