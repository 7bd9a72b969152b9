"""Build the connectors a site model asks for: one per source that has bindings.

``settings`` is anything with the attributes below (the agent's settings object, a namespace in tests);
missing attributes take the defaults shown::

    mqtt_url              "mqtt://127.0.0.1:1883"  broker for MQTT sources that give no url
    gateway_id            the site id              part of the default MQTT client id
    client_id_prefix      "ft-agent"               MQTT client ids are <prefix>-<gateway>-<source> unless set
    max_payload_bytes     262144                   larger MQTT payloads are rejected unread
    queue_size            2000                     batches waiting for the pipeline, per connector
    mqtt_keepalive_s      10
    mqtt_receive_maximum  1000                     un-acked QoS 1 messages the broker may send at once
    mqtt_session_expiry_s 86400                    how long the broker keeps our session while away
    opcua_watchdog_s      5.0                      a silent OPC-UA server is declared dead after this
    sparkplug_rebirth_interval_s 5.0               least time between rebirth requests to one edge node
    backoff_initial_s     0.5
    backoff_cap_s         30.0
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import structlog

from edge_agent.connectors import Connector
from edge_agent.connectors.json_payload import BOOL, NUMBER, STRING, JsonDecoder, JsonField, split_path
from edge_agent.connectors.mqtt import MqttConnector
from edge_agent.connectors.opcua import OpcUaConnector, OpcUaSignal
from edge_agent.connectors.sparkplug import SparkplugDecoder, SparkplugField
from edge_agent.errors import ConfigError
from plant.errors import BrokerUrlError
from plant.mqtt import Backoff, BrokerUrl, MqttOptions
from plant.site import DataType, MqttBinding, MqttSource, OpcUaBinding, OpcUaSource, Site

log = structlog.get_logger(__name__)

_KIND = {DataType.FLOAT: NUMBER, DataType.INT: NUMBER, DataType.BOOL: BOOL, DataType.STRING: STRING}


def build_connectors(
    site: Site, settings: object | None = None, env: Mapping[str, str] | None = None
) -> list[Connector]:
    """One connector per source of ``site`` that has bindings; ConfigError if a source cannot be set up."""
    env = os.environ if env is None else env
    bound = _bindings_by_source(site)
    out: list[Connector] = []
    for source_id, source in site.sources.items():
        items = bound.get(source_id, [])
        if not items:
            log.info("source_unused", source=source_id)
            continue
        if isinstance(source, OpcUaSource):
            out.append(_opcua(source_id, source, items, settings, env))
        else:
            out.append(_mqtt(site, source_id, source, items, settings, env))
    return out


Bound = tuple[str, str, OpcUaBinding | MqttBinding, str]  # node id, property, binding, value kind


def _bindings_by_source(site: Site) -> dict[str, list[Bound]]:
    out: dict[str, list[Bound]] = {}
    for node in site.assets():
        assert node.type is not None
        props = site.asset_types[node.type].properties
        for prop, binding in node.bindings.items():
            kind = _KIND[props[prop].dtype]
            out.setdefault(binding.source, []).append((node.id, prop, binding, kind))
    return out


def _opt(settings: object | None, name: str, default: object) -> object:
    value = getattr(settings, name, None) if settings is not None else None
    return default if value is None else value


def _backoff(settings: object | None) -> Backoff:
    initial = float(_opt(settings, "backoff_initial_s", 0.5))  # type: ignore[arg-type]
    cap = float(_opt(settings, "backoff_cap_s", 30.0))  # type: ignore[arg-type]
    return Backoff(initial=initial, cap=max(cap, initial))


def _password(source_id: str, var: str | None, env: Mapping[str, str]) -> str | None:
    if var is None:
        return None
    if var not in env:
        raise ConfigError(f"source {source_id!r}: environment variable {var!r} (the password) is not set")
    return env[var]


def _opcua(
    source_id: str, source: OpcUaSource, items: list[Bound], settings: object | None, env: Mapping[str, str]
) -> OpcUaConnector:
    signals = [OpcUaSignal(node, prop, b) for node, prop, b, _ in items if isinstance(b, OpcUaBinding)]
    return OpcUaConnector(
        source_id,
        source,
        signals,
        password=_password(source_id, source.security.password_env, env),
        watchdog_s=float(_opt(settings, "opcua_watchdog_s", 5.0)),  # type: ignore[arg-type]
        queue_size=int(_opt(settings, "queue_size", 2000)),  # type: ignore[call-overload]
        backoff=_backoff(settings),
    )


def _mqtt(
    site: Site,
    source_id: str,
    source: MqttSource,
    items: list[Bound],
    settings: object | None,
    env: Mapping[str, str],
) -> MqttConnector:
    try:
        url = BrokerUrl.parse(source.url or str(_opt(settings, "mqtt_url", "mqtt://127.0.0.1:1883")))
    except BrokerUrlError as exc:
        raise ConfigError(f"source {source_id!r}: MQTT url: {exc}") from None
    max_payload = int(_opt(settings, "max_payload_bytes", 256 * 1024))  # type: ignore[call-overload]
    prefix = _opt(settings, "client_id_prefix", "ft-agent")
    gateway = _opt(settings, "gateway_id", site.site.id)
    options = MqttOptions(
        host=url.host,
        port=url.port,
        client_id=source.client_id or url.client_id or f"{prefix}-{gateway}-{source_id}",
        tls=url.tls,
        ca_file=source.ca_file or url.ca_file,
        username=source.username or url.username,
        password=_password(source_id, source.password_env, env) or url.password,
        keepalive_s=int(_opt(settings, "mqtt_keepalive_s", 10)),  # type: ignore[call-overload]
        receive_maximum=int(_opt(settings, "mqtt_receive_maximum", 1000)),  # type: ignore[call-overload]
        session_expiry_s=int(_opt(settings, "mqtt_session_expiry_s", 86_400)),  # type: ignore[call-overload]
        protocol=source.protocol,
    )
    decoder: JsonDecoder | SparkplugDecoder
    if source.format == "sparkplug":
        sp = [
            SparkplugField(b.device, b.metric, node, prop, kind)
            for node, prop, b, kind in items
            if isinstance(b, MqttBinding) and b.device and b.metric
        ]
        rebirth_s = float(_opt(settings, "sparkplug_rebirth_interval_s", 5.0))  # type: ignore[arg-type]
        decoder = SparkplugDecoder(source_id, sp, max_payload=max_payload, rebirth_interval_s=rebirth_s)
    else:
        routes = [
            (b.topic, JsonField(node, prop, split_path(b.path), split_path(b.ts_path) or None, kind))
            for node, prop, b, kind in items
            if isinstance(b, MqttBinding) and b.topic
        ]
        decoder = JsonDecoder(source_id, routes, max_payload=max_payload)
    return MqttConnector(
        source_id,
        options,
        decoder,
        queue_size=int(_opt(settings, "queue_size", 2000)),  # type: ignore[call-overload]
        backoff=_backoff(settings),
    )
