"""Model sync: the gateway runs the model versions the platform promotes for its asset types.

Every ``EDGE_MODEL_POLL_S`` (and at once after a rollback) the agent asks ``GET /api/v1/models/promoted``. For
each asset type of its site and each task in that type's ``models:`` list whose promoted version is not the one
the Diagnoser runs, and not one this gateway found bad:

1. download ``/api/v1/models/<task>/<version>/archive`` and check that the sha256 of the body is the
   ``X-Model-Sha256`` header and the promoted sha256;
2. unpack it into a temporary directory beside ``EDGE_MODEL_DIR/<task>/<version>/``, check the manifest names
   that task and version and every file's sha256 matches the manifest, then rename it into place (atomic: the
   directory is whole or absent);
3. ``diagnoser.load_model`` (on a thread) then ``use_model``: the Diagnoser loads and checks the new model, then scores
   the next window with it; the frames it holds stay, so the first window after the swap is whole.

Paths, bodies, the digest header and the archive's layout are the contract's (plant/platform_api.py).

A version that fails (integrity, ``ModelUnusable`` or any other error from the swap, or a rollback the Diagnoser
reports through
``on_rollback`` after outputs left their declared range on live data) is reported to the platform
(``POST .../failures``), its directory removed unless another asset type runs it, and remembered in
``<data_dir>/model_sync.json``: it is not pulled again, so only a newer promotion replaces it. Reports the
platform did not take are kept there too and sent on the next cycle. A platform that cannot be reached costs a
log line per cycle; the models in use keep running.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import io
import json
import os
import shutil
import tarfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import structlog
from pydantic import ValidationError

from edge_agent import metrics
from edge_agent.config import AgentSettings
from edge_agent.diagnostics.model_slots import Slot
from edge_agent.errors import ModelUnusable
from models import registry
from models.errors import ModelError
from plant.fields import TEXT_LENGTH
from plant.platform_api import (
    ARCHIVE,
    FAILURES,
    PROMOTED,
    SHA256_HEADER,
    ModelFailureReport,
    PromotedModel,
    url,
)
from plant.site import Site

log = structlog.get_logger(__name__)

STATE_FILE = "model_sync.json"
_JSON = {"Content-Type": "application/json"}
MAX_ARCHIVE_BYTES = 512 << 20
BAD_KEPT = 200  # remembered bad versions, newest kept


class ModelRunner(Protocol):
    """What model sync needs of the Diagnoser (edge_agent/diagnostics/diagnose.py)."""

    def load_model(self, asset_type: str, task: str, model_dir: Path) -> Slot:
        """Load and check a model directory without using it (called on a worker thread); ModelUnusable if unfit."""
        ...

    def use_model(self, asset_type: str, task: str, slot: Slot) -> str:
        """Use a checked model from the next window on; returns its version."""
        ...

    def versions(self) -> dict[str, dict[str, str]]:
        """asset type → task → version in use."""
        ...


class ArchiveRefused(Exception):
    """A downloaded archive is not what the platform promised (sha256, manifest, files)."""


@dataclass(frozen=True, slots=True)
class Failure:
    """A version this gateway could not run for an asset type.

    Args:
        asset_type: the asset type it was promoted for.
        task: rul, faults or anomaly.
        version: the registry version.
        reason: why, for people reading the platform's model list.
    """

    asset_type: str
    task: str
    version: str
    reason: str


class ModelSync:
    """Pulls promoted model versions into the local registry and swaps them into the Diagnoser.

    Args:
        site: the site model (which asset types run which tasks).
        settings: agent settings (platform URL and key, model directory, poll interval, data directory).
        client: an HTTP client to use instead of one made from the settings (its base URL is ignored).
    """

    def __init__(self, site: Site, settings: AgentSettings, *, client: httpx.AsyncClient | None = None) -> None:
        if not settings.platform_url:
            raise ValueError("model sync needs EDGE_PLATFORM_URL")
        self.site = site
        self.url = settings.platform_url.rstrip("/")
        self.gateway = settings.gateway_id
        self.poll_s = settings.model_poll_s
        self.model_dir = settings.model_registry_dir
        self.state_path = settings.data_dir / STATE_FILE
        self._headers = {"Authorization": f"Bearer {settings.platform_key}"} if settings.platform_key else {}
        self._given_client = client
        self._client: httpx.AsyncClient | None = None
        self.bad: dict[tuple[str, str, str], str] = {}
        self.unreported: list[Failure] = []
        self._rollbacks: collections.deque[Failure] = collections.deque()  # appended from any thread
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._load_state()

    def on_rollback(self, asset_type: str, task: str, version: str, reason: str) -> None:
        """The Diagnoser's rollback callback (any thread): report the version and never pull it again."""
        self._rollbacks.append(Failure(asset_type, task, version, f"rolled back: {reason}"))
        if self._loop is not None and self._wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing: the state file keeps nothing lost
                self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self, diagnoser: ModelRunner) -> None:
        """Sync now, then every ``poll_s`` seconds or at once after a rollback, until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        try:
            while True:
                await self.sync_once(diagnoser)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
                self._wake.clear()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections (one given to the constructor is left to its owner)."""
        if self._client is not None and self._given_client is None:
            await self._client.aclose()
        self._client = None

    @property
    def client(self) -> httpx.AsyncClient:
        """The HTTP client, made on first use (on the running loop)."""
        if self._client is None:
            self._client = self._given_client or httpx.AsyncClient(timeout=30.0)
        return self._client

    async def sync_once(self, diagnoser: ModelRunner) -> list[tuple[str, str, str]]:
        """One cycle: rollbacks reported, promoted versions pulled; returns (asset type, task, version) swapped in."""
        while self._rollbacks:
            await self._fail(diagnoser, self._rollbacks.popleft())
        await self._send_reports()
        try:
            promoted = await self._promoted()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("model_sync_unreachable", url=self.url, error=str(exc) or type(exc).__name__)
            return []
        swapped = []
        for asset_type, task, version, sha256 in self._wanted(promoted, diagnoser.versions()):
            if await self._pull(diagnoser, asset_type, task, version, sha256):
                swapped.append((asset_type, task, version))
        return swapped

    async def _promoted(self) -> dict[str, Any]:
        response = await self.client.get(url(self.url, PROMOTED), headers=self._headers)
        response.raise_for_status()
        body = response.json()
        if not isinstance(body, dict):
            raise ValueError("promoted models: not a JSON object")
        return body

    def _wanted(self, promoted: dict[str, Any], running: dict[str, dict[str, str]]) -> list[tuple[str, str, str, str]]:
        """Promoted versions this site runs, not in use yet and not known bad here."""
        out: list[tuple[str, str, str, str]] = []
        for asset_type, tasks in promoted.items():
            kind = self.site.asset_types.get(asset_type)
            if kind is None or not isinstance(tasks, dict):
                continue
            for task, entry in tasks.items():
                if task not in kind.models:
                    continue
                try:
                    promotion = PromotedModel.model_validate(entry)
                except ValidationError:
                    continue
                version, sha256 = promotion.version, promotion.sha256
                if not registry_name_ok(version) or running.get(asset_type, {}).get(task) == version:
                    continue
                if (asset_type, task, version) not in self.bad:
                    out.append((asset_type, task, version, sha256))
        return out

    async def _pull(self, diagnoser: ModelRunner, asset_type: str, task: str, version: str, sha256: str) -> bool:
        try:
            directory = await self._install(task, version, sha256)
        except ArchiveRefused as exc:
            metrics.MODEL_SYNC.labels(task, "refused").inc()
            await self._fail(diagnoser, Failure(asset_type, task, version, f"download refused: {exc}"))
            return False
        except httpx.HTTPError as exc:
            metrics.MODEL_SYNC.labels(task, "unreachable").inc()
            log.warning("model_download_failed", task=task, version=version, error=str(exc) or type(exc).__name__)
            return False
        except OSError as exc:  # disk full, permissions: this gateway's trouble, not the model's; tried next poll
            metrics.MODEL_SYNC.labels(task, "install_failed").inc()
            log.error(
                "model_install_failed",
                task=task,
                version=version,
                error=f"{type(exc).__name__}: {exc}",
                hint="free space or fix permissions under EDGE_MODEL_DIR; tried again at the next poll",
            )
            return False
        try:  # load and probe on a thread (a large model must not stall ingestion), then swap on the loop
            slot = await asyncio.to_thread(diagnoser.load_model, asset_type, task, directory)
            loaded = diagnoser.use_model(asset_type, task, slot)
        except Exception as exc:  # ModelUnusable, or anything else a bad model makes the swap raise
            metrics.MODEL_SYNC.labels(task, "failed").inc()
            reason = str(exc) if isinstance(exc, ModelUnusable) else f"{type(exc).__name__}: {exc}"
            await self._fail(diagnoser, Failure(asset_type, task, version, f"load failed: {reason}"))
            return False
        metrics.MODEL_SYNC.labels(task, "swapped").inc()
        log.info("model_swapped", asset_type=asset_type, task=task, version=loaded)
        return True

    async def _install(self, task: str, version: str, sha256: str) -> Path:
        """The checked directory of a version, downloaded unless a whole copy is already in place."""
        final = self.model_dir / task / version
        if final.is_dir():
            try:
                await asyncio.to_thread(verify_model_dir, final, task, version)
                return final
            except ArchiveRefused:
                pass  # a damaged copy: replaced below
        data = await self._download(task, version, sha256)
        await asyncio.to_thread(install_archive, data, final, task, version)
        log.info("model_downloaded", task=task, version=version, bytes=len(data), path=str(final))
        return final

    async def _download(self, task: str, version: str, sha256: str) -> bytes:
        archive = url(self.url, ARCHIVE, task=task, version=version)
        async with self.client.stream("GET", archive, headers=self._headers) as response:
            response.raise_for_status()
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_ARCHIVE_BYTES:
                    raise ArchiveRefused(f"archive larger than {MAX_ARCHIVE_BYTES} bytes")
                chunks.append(chunk)
            declared = response.headers.get(SHA256_HEADER, "")
        data = b"".join(chunks)
        digest = hashlib.sha256(data).hexdigest()
        if declared != digest:
            raise ArchiveRefused(f"sha256 of the archive is {digest[:12]}…, {SHA256_HEADER} says {declared[:12]}…")
        if digest != sha256:
            raise ArchiveRefused(f"sha256 of the archive is {digest[:12]}…, the promoted one {sha256[:12]}…")
        return data

    async def _fail(self, diagnoser: ModelRunner, failure: Failure) -> None:
        """Remember a bad version, remove its files unless in use elsewhere, and report it."""
        log.error("model_rejected", **asdict(failure))
        self.bad[(failure.asset_type, failure.task, failure.version)] = failure.reason
        while len(self.bad) > BAD_KEPT:
            del self.bad[next(iter(self.bad))]
        in_use = any(tasks.get(failure.task) == failure.version for tasks in diagnoser.versions().values())
        if not in_use:
            await asyncio.to_thread(shutil.rmtree, self.model_dir / failure.task / failure.version, True)
        self.unreported.append(failure)
        await asyncio.to_thread(self._save_state)
        await self._send_reports()

    async def _send_reports(self) -> None:
        """Send the failures the platform has not taken yet; keep those it could not take for later."""
        kept: list[Failure] = []
        for failure in self.unreported:
            where = url(self.url, FAILURES, task=failure.task, version=failure.version)
            body = ModelFailureReport.model_construct(
                gateway=self.gateway, asset_type=failure.asset_type, reason=failure.reason[:TEXT_LENGTH]
            )
            try:
                response = await self.client.post(
                    where, content=body.model_dump_json(), headers={**self._headers, **_JSON}
                )
            except httpx.HTTPError as exc:
                log.warning("model_failure_report_failed", task=failure.task, error=str(exc) or type(exc).__name__)
                kept.append(failure)
                continue
            if response.status_code in (404, 422):  # an unknown version, a malformed report: resending won't help
                log.warning("model_failure_report_refused", status=response.status_code, detail=response.text[:200])
            elif response.status_code >= 400:  # the platform failing, or a key being fixed: try again next cycle
                kept.append(failure)
        if len(kept) != len(self.unreported):
            self.unreported = kept
            await asyncio.to_thread(self._save_state)

    def _load_state(self) -> None:
        try:
            state = json.loads(self.state_path.read_text())
            self.bad = {(b["asset_type"], b["task"], b["version"]): b["reason"] for b in state.get("bad", [])}
            self.unreported = [Failure(**f) for f in state.get("unreported", [])]
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:  # a damaged file: start afresh, say so
            log.warning("model_sync_state_unreadable", path=str(self.state_path), error=str(exc))

    def _save_state(self) -> None:
        """Write the state file atomically (temporary file, fsync, rename); a failure (disk full) is logged,
        the state kept in memory and written with the next change."""
        bad = [{"asset_type": a, "task": t, "version": v, "reason": r} for (a, t, v), r in self.bad.items()]
        state = {"bad": bad, "unreported": [asdict(f) for f in self.unreported]}
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_path.with_suffix(".tmp")
            with tmp.open("w") as f:
                json.dump(state, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_path)
        except OSError as exc:
            log.warning("model_sync_state_not_saved", path=str(self.state_path), error=str(exc))


def registry_name_ok(version: str) -> bool:
    """A version usable as one directory name (the platform refuses others at upload)."""
    return bool(version) and version not in (".", "..") and "/" not in version and "\\" not in version


def verify_model_dir(directory: Path, task: str, version: str) -> None:
    """ArchiveRefused unless the directory holds that task and version, with every present file's sha256 right."""
    try:
        manifest = registry.read_manifest(directory)
        if (manifest["task"], str(manifest["version"])) != (task, version):
            raise ArchiveRefused(f"the archive holds {manifest['task']} {manifest['version']}, not {task} {version}")
        for variant, entry in manifest["variants"].items():
            if variant == manifest["default_variant"] or (directory / entry["file"]).exists():
                registry.read_variant(directory, manifest, variant)
    except ModelError as exc:
        raise ArchiveRefused(str(exc)) from None


def install_archive(data: bytes, final: Path, task: str, version: str) -> None:
    """Unpack into a temporary directory beside ``final``, check it, then rename it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{version}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                tar.extractall(tmp, filter="data")  # refuses absolute paths, links out, devices
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ArchiveRefused(f"not a model archive ({exc})") from None
        unpacked = _model_root(tmp)
        verify_model_dir(unpacked, task, version)
        if final.exists():
            shutil.rmtree(final)
        os.replace(unpacked, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _model_root(tmp: Path) -> Path:
    """The unpacked directory holding the manifest: the top, or its one folder."""
    if (tmp / registry.MANIFEST).is_file():
        return tmp
    folders = [p for p in tmp.iterdir() if p.is_dir()]
    if len(folders) == 1 and (folders[0] / registry.MANIFEST).is_file():
        return folders[0]
    raise ArchiveRefused(f"the archive has no {registry.MANIFEST}")
