"""Settings of the platform (``factory-twin serve``), from TWIN_* environment variables or a config file.

Defaults need nothing installed: a SQLite file under the data directory, and an embedded MQTT broker started
in-process when no broker URL is given.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

# Who may read GET /metrics and the API's documentation (/docs, /redoc, /openapi.json): anyone, holders of a
# key of at least the viewer role, or nobody (404).
Access = Literal["open", "key", "off"]

_PLACEHOLDERS = {"changeme", "change-me", "secret", "password", "admin", "xxx"}


class TwinSettings(BaseSettings):
    """Platform settings. Environment variables win over the config file (``TWIN_CONFIG``)."""

    model_config = SettingsConfigDict(env_prefix="TWIN_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("var"), description="where the SQLite file and other local state live")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<data_dir>/twin.db")
    database_read_url: str | None = Field(
        None, description="SQLAlchemy URL of a read replica for the API's history and frames reads; default: primary")
    mqtt_url: str | None = Field(None, description="mqtt[s]://[user:pass@]host:port; none starts an embedded broker")
    embedded_mqtt_host: str = Field("127.0.0.1", description="where the embedded broker listens (no mqtt_url)")
    embedded_mqtt_port: int = Field(1883, ge=0, le=65535, description="embedded broker port; 0 picks a free one")
    mqtt_client_id: str = "factory-twin-ingest"
    ingest_workers: int = Field(1, ge=1, le=64)
    ingest_share_group: str = "ingest"
    ingest_leave_on_stop: bool = Field(False, description="end the broker sessions on stop (scale-down)")
    ingest_gateway_budget: float = Field(
        20_000, ge=0, description="values (items) per second each gateway may send; 0: no limit"
    )
    ingest_gateway_burst: float = Field(
        100_000, ge=0, description="values a gateway may send at once after a quiet spell (flood control)"
    )
    ingest_max_payload_bytes: int = Field(
        1 << 20, ge=1024, description="larger uplink payloads are refused unparsed (dead-lettered too_large)"
    )
    ingest_max_string: int = Field(4096, ge=16, description="longest string value an uplink item may carry")
    ingest_range_margin: float = Field(
        10.0, ge=0, description="a number more than this many spans outside its property's range is refused"
    )
    ingest_dead_letters_kept: int = Field(10_000, ge=100, description="dead letters kept; the oldest go beyond")
    mqtt_topic_root: str = Field("factory-twin/v1", description="root of the uplink and ack topics")
    site_file: Path | None = Field(None, description="site model YAML; loaded into the twin at start")
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    max_future_s: float = Field(600.0, description="reject values stamped further in the future than this")
    min_valid_year: int = Field(2000, description="reject values stamped before this year (PLC clock resets)")
    webhook_allowlist: list[str] = Field(
        default_factory=list, description="host patterns webhooks may go to (optionally :port); empty: any host"
    )
    webhook_allow_private: list[str] = Field(
        default_factory=list,
        description="CIDRs and host names of the plant's own webhook receivers, which may be loopback, private or "
        "link-local addresses (refused otherwise; cloud metadata addresses always)",
    )
    knowledge_dir: Path | None = Field(None, description="knowledge-base YAML files loaded at start")
    log_json: bool | None = Field(None, description="JSON logs; default: JSON when stderr is not a terminal")
    metrics_host: str = Field("127.0.0.1", description="where an ingest process serves Prometheus metrics")
    metrics_port: int = Field(-1, ge=-1, le=65535, description="ingest metrics port; -1: none")
    api_metrics: bool = Field(True, description="deprecated: false is metrics_access=off")
    metrics_access: Access = Field("key", description="GET /metrics of the API: open, key (viewer and up) or off")
    docs_access: Access = Field("key", description="/docs, /redoc, /openapi.json: open, key (viewer and up) or off")
    api_body_limit: int = Field(1 << 20, ge=1 << 10, description="largest request body with a key, bytes")
    api_public_body_limit: int = Field(16 << 10, ge=1 << 10, description="largest body without a key (login), bytes")
    api_body_timeout_s: float = Field(
        10.0, gt=0, description="a request body must arrive within this (plus 1 s per 64 KiB declared), else 408"
    )
    auth_name_failures: int = Field(5, ge=1, description="failed logins per user name within a minute, then lock-out")
    auth_address_failures: int = Field(
        20, ge=1, description="failed logins and unknown keys per client address within a minute, then lock-out"
    )
    auth_lockout_s: float = Field(60.0, gt=0, description="first lock-out; each next one for the same name doubles")
    auth_lockout_max_s: float = Field(900.0, gt=0, description="longest lock-out")
    alert_tick_s: float = Field(2.0, gt=0, description="alert clock: stale data, delays, shelves, escalation")
    alert_sweep_s: float = Field(
        30.0, gt=0, description="the alert leader reads the feed and the stored sites this often, however busy"
    )
    alert_leader_retry_s: float = Field(2.0, gt=0, description="a standby tries to become the alert leader this often")
    history_retention_days: float = Field(0, ge=0, description="raw history kept, days; 0 keeps all")
    rollup_retention_days: float = Field(0, ge=0, description="1m/1h rollups kept, days; 0 keeps all")
    history_compress_after_days: float = Field(
        0, ge=0, description="TimescaleDB only: raw history chunks older than this are compressed, days; 0: never")
    history_partition_hours: int = Field(24, ge=1, le=24 * 31, description="PostgreSQL partition span")
    history_partitions_ahead: int = Field(3, ge=1, le=1000, description="partitions created ahead of now")
    history_maintenance_s: float = Field(60.0, gt=0, description="partition and rollup job interval (ingest)")
    session_idle_s: float = Field(8 * 3600.0, gt=0, description="a dashboard login ends after this long unused")
    session_max_s: float = Field(7 * 86_400.0, gt=0, description="a dashboard login ends this long after it began")
    audit_retention_days: float = Field(0, ge=0, description="audit records kept, days; 0 keeps all")
    key_rotation_grace_s: float = Field(
        86_400.0, ge=0, le=90 * 86_400.0, description="a rotated API key keeps working this long by default"
    )
    model_dir: Path | None = Field(
        None,
        description="registry of teacher models for the cascade besides uploaded ones, read once per task (restart "
        "after adding one); default: the package's",
    )
    model_max_bytes: int = Field(64 << 20, ge=1 << 16, description="largest model archive an upload may send")
    config: Path | None = Field(None, description="optional YAML config file")

    @field_validator("database_url", "database_read_url")
    @classmethod
    def _no_placeholder_password(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v and "@" in v and ":" in v.split("@", 1)[0].split("//", 1)[-1]:
            password = v.split("@", 1)[0].split("//", 1)[-1].split(":", 1)[1]
            if password.lower() in _PLACEHOLDERS:
                raise ValueError(f"{info.field_name} uses a placeholder password; set a real one")
        return v

    @model_validator(mode="after")
    def _metrics_off(self) -> TwinSettings:
        if not self.api_metrics:  # the older switch, still honoured
            self.metrics_access = "off"
        return self

    @property
    def db_url(self) -> str:
        """The database URL to use, the SQLite default filled in."""
        return self.database_url or f"sqlite:///{self.data_dir / 'twin.db'}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        import os

        sources: list[Any] = [init_settings, env_settings, dotenv_settings]
        config_file = os.environ.get("TWIN_CONFIG")
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return (*sources, file_secret_settings)


@lru_cache(maxsize=1)
def get_settings() -> TwinSettings:
    """The process's settings, built once."""
    return TwinSettings()
