"""Settings of the edge agent (``factory-twin agent run``), from EDGE_* environment variables or a YAML file.

Environment variables win over the file named by ``EDGE_CONFIG`` (or passed as ``config_file``). Settings are
validated as a whole: a bad value raises ConfigError naming the field, and a running agent keeps its old
settings.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from edge_agent.errors import ConfigError
from plant.mqtt import BrokerUrl
from plant.wire import GATEWAY_ID_PATTERN, TOPIC_ROOT

_PLACEHOLDERS = {"changeme", "change-me", "secret", "password", "admin", "xxx"}

DropPolicy = Literal["drop_oldest_raw", "drop_oldest"]


class AgentSettings(BaseSettings):
    """Agent settings; one instance per program, rebuilt whole on reload."""

    model_config = SettingsConfigDict(env_prefix="EDGE_", extra="ignore")

    gateway_id: str = Field("gateway-1", pattern=GATEWAY_ID_PATTERN, description="this gateway's id on the wire")
    topic_root: str = Field(TOPIC_ROOT, min_length=1, description="root of the uplink, ack and command topics")
    site_file: Path | None = Field(None, description="site model YAML")
    data_dir: Path = Field(Path("var/agent"), description="outbox and dead-letter files live here")
    broker_url: str | None = Field(None, description="platform broker, mqtt[s]://user:pass@host:port")
    mqtt_url: str | None = Field(
        None, description="plant broker for MQTT sources whose site entry names no url"
    )
    broker_ca_file: Path | None = Field(None, description="CA bundle for an mqtts:// broker")
    broker_client_id: str | None = Field(None, description="MQTT client id; default ft-agent-<gateway_id>")
    outbox_budget_bytes: int = Field(
        1 << 30, ge=1 << 16, description="outbox size before the drop policy acts"
    )
    drop_policy: DropPolicy = "drop_oldest_raw"
    outbox_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL", description="FULL survives power loss; NORMAL (with WAL) survives only a process crash"
    )
    commit_window_ms: float = Field(
        20.0, ge=0, le=1000, description="group commit: collect this long, commit once"
    )
    max_pending_items: int = Field(50_000, ge=100, description="readings buffered before the sink waits")
    chunk_items: int = Field(256, ge=1, le=10_000, description="items per outbox row")
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(
        9464, ge=-1, le=65535, description="0 picks a free port, -1 disables the server"
    )
    uplink_batch_size: int = Field(2000, ge=1, le=100_000, description="items per uplink batch at most")
    uplink_interval_s: float = Field(0.2, gt=0, le=60, description="wait this long for a batch to fill")
    uplink_max_inflight: int = Field(
        8, ge=1, le=1000, description="batches published and not yet acknowledged"
    )
    uplink_live_share: float = Field(
        0.25, ge=0, le=1, description="part of a batch kept for the newest items"
    )
    ack_timeout_s: float = Field(10.0, gt=0, description="resend a batch not acknowledged within this time")
    clock_window: int = Field(64, ge=4, le=10_000, description="samples in a source's clock-offset window")
    clock_quantile: float = Field(
        0.1, ge=0, le=0.5, description="low quantile of recv - source over the window"
    )
    clock_warmup_s: float = Field(
        30.0, ge=0, description="a clock correction changes only after this much data"
    )
    clock_threshold_ms: float = Field(
        500.0, ge=0, description="correct a source clock only beyond this offset"
    )
    max_future_s: float = Field(600.0, gt=0, description="a source clock further ahead than this is absurd")
    min_valid_year: int = Field(2000, ge=1970, description="a source clock before this year is absurd")
    max_payload_bytes: int = Field(1 << 20, ge=1024, description="larger source payloads are rejected")
    deadletter_max_bytes: int = Field(10 << 20, ge=4096, description="dead-letter file size before rotation")
    deadletter_backups: int = Field(3, ge=0, le=100)
    watch_interval_s: float = Field(
        2.0, gt=0, description="how often the config files are checked for change"
    )
    log_json: bool | None = Field(None, description="JSON logs; default: JSON when stderr is not a terminal")
    config_file: Path | None = Field(None, description="optional YAML config file")
    # on-device diagnostics (edge_agent/diagnostics/diagnose.py)
    diagnose: bool = Field(True, description="run the asset types' models on the aligned frames")
    model_dir: Path | None = Field(
        None,
        description="local model registry (<task>/<version>/), where model sync installs; default <data_dir>/models."
        " The package's committed models serve a task it lacks",
    )
    diagnose_interval_s: float = Field(
        0.0, ge=0, le=86_400, description="diagnose an asset at most this often; 0: every grid point"
    )
    platform_url: str | None = Field(
        None, pattern=r"^https?://", description="platform REST API, for the cascade and model sync"
    )
    platform_key: str | None = Field(None, description="API key (role agent) for the platform REST API")
    model_poll_s: float = Field(
        60.0, ge=1, le=86_400, description="how often model sync asks the platform for promoted versions"
    )
    cascade_threshold: float = Field(
        0.5, ge=0, le=1, description="ask the platform's teacher below this student confidence (unless the "
        "model's manifest names its own cascade.confidence_threshold)"
    )
    cascade_thresholds: dict[Literal["rul", "faults", "anomaly"], float] = Field(
        default_factory=dict, description="per-task cascade_threshold"
    )
    cascade_timeout_s: float = Field(0.5, gt=0, le=30, description="the student's answer stands after this")
    cascade_max_inflight: int = Field(8, ge=1, le=1000, description="windows waiting for the platform at once")
    baseline_hours: float = Field(
        1.0, ge=0, description="healthy operation an anomaly baseline learns from per machine; 0: off"
    )
    baseline_max_rows: int = Field(20_000, ge=100, description="rows of healthy operation kept per machine")
    baseline_quantile: float = Field(
        0.99, gt=0.5, lt=1, description="an adapted anomaly threshold is at least this quantile of healthy scores"
    )
    load_cpu_high: float = Field(0.85, gt=0, le=1, description="process CPU share of the cores counted as load")
    load_busy_high: float = Field(0.5, gt=0, le=1, description="share of time spent in inference counted as load")
    load_backlog_high: float = Field(
        0.25, gt=0, le=1, description="ingestion backlog (share of max_pending_items) counted as load"
    )
    load_max_stretch: int = Field(32, ge=1, le=3600, description="diagnosis period multiplier under load, at most")

    @field_validator("platform_key")
    @classmethod
    def _platform_key_real(cls, v: str | None) -> str | None:
        if v is not None and v.lower() in _PLACEHOLDERS:
            raise ValueError("platform_key is a placeholder; set the agent key the platform issued")
        return v

    @field_validator("broker_url")
    @classmethod
    def _broker_url_valid(cls, v: str | None) -> str | None:
        if v is None:
            return v
        url = BrokerUrl.parse(v)
        if url.password and url.password.lower() in _PLACEHOLDERS:
            raise ValueError("broker_url uses a placeholder password; set a real one")
        return v

    @property
    def broker(self) -> BrokerUrl | None:
        """The platform broker, parsed; None when not configured."""
        return BrokerUrl.parse(self.broker_url) if self.broker_url else None

    @property
    def client_id(self) -> str:
        """The MQTT client id used towards the platform."""
        return self.broker_client_id or f"ft-agent-{self.gateway_id}"

    @property
    def outbox_path(self) -> Path:
        """The outbox database file."""
        return self.data_dir / "outbox.sqlite"

    @property
    def model_registry_dir(self) -> Path:
        """The local model registry the Diagnoser loads from and model sync installs into."""
        return self.model_dir or self.data_dir / "models"

    @property
    def deadletter_path(self) -> Path:
        """The dead-letter file."""
        return self.data_dir / "deadletter.jsonl"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[Any] = [init_settings, env_settings]
        config_file = _CONFIG_FILE_OVERRIDE.get("path") or os.environ.get("EDGE_CONFIG")
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return (*sources, file_secret_settings)


# load_settings names the YAML file here for the duration of one construction (sources are class-level).
_CONFIG_FILE_OVERRIDE: dict[str, str] = {}


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> AgentSettings:
    """Build settings from overrides, EDGE_* variables and the YAML file; raises ConfigError saying why."""
    path = str(config_file) if config_file else os.environ.get("EDGE_CONFIG")
    if path:
        _check_yaml_file(Path(path))
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        if path:
            _CONFIG_FILE_OVERRIDE["path"] = path
            clean.setdefault("config_file", Path(path))
        return AgentSettings(**clean)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None
    finally:
        _CONFIG_FILE_OVERRIDE.clear()


def _check_yaml_file(path: Path) -> None:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read agent config: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: an agent config file must be a mapping of settings")


def _describe(exc: ValidationError, path: str | None) -> str:
    where = f"{path}: " if path else ""
    lines = [
        f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {re.sub(r'^Value error, ', '', e['msg'])}"
        for e in exc.errors()
    ]
    return f"{where}invalid agent settings\n  " + "\n  ".join(lines)
