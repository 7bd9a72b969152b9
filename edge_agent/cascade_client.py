"""The edge side of the cascade: a window the student is unsure about goes to the platform's teacher.

``ask`` posts the window (plant/platform_api.py ``CascadeRequest``) to ``{EDGE_PLATFORM_URL}/api/v1/cascade``
with the agent's key and waits at most ``EDGE_CASCADE_TIMEOUT_S``. The platform runs the teacher, records its
answer (source ``platform``) like an uplinked diagnosis and returns it. Any failure (timeout, connection
refused, an error status, an answer that is not the diagnosis asked for, a window the contract refuses)
returns None, and the caller uplinks the student's answer marked ``edge_fallback``: a slow or absent platform
never delays a diagnosis by more than the timeout.

After ``open_after`` failures in a row the client stops asking for ``cooldown_s`` (answers None at once), so
an unreachable platform costs no timeout per window; the first request after the pause probes it again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

import httpx
import structlog
from pydantic import ValidationError

from edge_agent import metrics
from edge_agent.config import AgentSettings
from plant.platform_api import CASCADE, CascadeRequest, url
from plant.wire import Diagnosis, Scalar

log = structlog.get_logger(__name__)

_JSON = {"Content-Type": "application/json"}


class CascadeClient:
    """Asks the platform's teacher about single windows.

    Args:
        base: the platform's REST API base URL.
        key: the agent's API key (role ``agent``), sent as a Bearer token.
        timeout_s: how long the student's answer waits for the teacher's.
        open_after: failures in a row after which the client pauses.
        cooldown_s: how long it pauses.
    """

    def __init__(
        self,
        base: str,
        key: str | None,
        *,
        timeout_s: float = 0.5,
        open_after: int = 3,
        cooldown_s: float = 10.0,
    ) -> None:
        self.url = url(base, CASCADE)
        self.timeout_s = timeout_s
        self.open_after = open_after
        self.cooldown_s = cooldown_s
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client: httpx.AsyncClient | None = None
        self._failures = 0
        self._paused_until = 0.0

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> CascadeClient | None:
        """The client for the configured platform, or None when no platform URL is set."""
        if not settings.platform_url:
            return None
        return cls(settings.platform_url, settings.platform_key, timeout_s=settings.cascade_timeout_s)

    async def ask(
        self,
        node: str,
        task: str,
        ts: int,
        model: str,
        version: str,
        window: Mapping[str, Sequence[Scalar]],
        units: Mapping[str, str],
    ) -> Diagnosis | None:
        """The teacher's diagnosis of this window, or None when the platform does not give it in time."""
        if time.monotonic() < self._paused_until:
            metrics.CASCADE.labels(task, "paused").inc()
            return None
        try:
            body = CascadeRequest.model_validate(
                {"node": node, "task": task, "ts": ts, "model": model, "version": version,
                 "window": {k: list(v) for k, v in window.items()}, "units": dict(units)}
            )  # fmt: skip
        except ValidationError as exc:
            log.debug("cascade_window_invalid", error=str(exc.errors()[0]["msg"]))
            result, answer = "invalid", None
        else:
            result, answer = await self._post(body)
        if answer is not None and (answer.node, answer.task, answer.ts) != (node, task, ts):
            result, answer = "mismatch", None
        metrics.CASCADE.labels(task, result).inc()
        if answer is None:
            self._failed(result)
            return None
        self._failures = 0
        return answer

    async def _post(self, body: CascadeRequest) -> tuple[str, Diagnosis | None]:
        if self._client is None:
            self._client = httpx.AsyncClient(headers=self._headers)
        try:  # the timeout bounds the whole exchange, not each of httpx's phases
            async with asyncio.timeout(self.timeout_s):
                response = await self._client.post(
                    self.url, content=body.model_dump_json(), headers=_JSON, timeout=self.timeout_s
                )
        except (httpx.TimeoutException, TimeoutError):
            return "timeout", None
        except httpx.HTTPError as exc:
            log.debug("cascade_unreachable", error=str(exc))
            return "unreachable", None
        if response.status_code != 200:
            log.debug("cascade_refused", status=response.status_code, detail=response.text[:200])
            return f"http_{response.status_code}", None
        try:
            return "answered", Diagnosis.model_validate_json(response.content)
        except ValidationError:
            return "bad_answer", None

    def _failed(self, result: str) -> None:
        self._failures += 1
        if self._failures >= self.open_after:
            self._paused_until = time.monotonic() + self.cooldown_s
            log.warning("cascade_paused", after=self._failures, last=result, for_s=self.cooldown_s)
            self._failures = 0

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
