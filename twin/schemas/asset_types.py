"""API schemas of ``/api/v1/asset-types`` (the routes: twin/api/routes/asset_types.py)."""

from __future__ import annotations

from pydantic import Field

from twin.schemas.base import Schema


class LimitPublic(Schema):
    """One alarm limit of a property."""

    rule: str
    name: str = Field(description="HIHI, HI, LO or LOLO")
    value: float
    severity: str


class RateLimitPublic(Schema):
    """A rate-of-change limit of a property (units per second over a window)."""

    rule: str
    max_rate: float
    window_s: float
    severity: str


class WritablePublic(Schema):
    """How a property may be written (a setpoint): limits, rate, least role, two-person rule, default expiry."""

    unit: str
    dtype: str
    limits: tuple[float, float]
    max_rate: float | None
    role: str
    two_person: bool
    expiry_s: float


class AssetTypePublic(Schema):
    """An asset type as people see it."""

    id: str
    description: str
    key_signals: list[str]
    models: list[str]
    limits: dict[str, list[LimitPublic]]
    rates: dict[str, list[RateLimitPublic]]
    writable: dict[str, WritablePublic] = Field({}, description="the setpoints people may write")
