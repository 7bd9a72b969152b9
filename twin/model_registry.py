"""The platform's model registry: uploaded model versions, which one each asset type runs, and failure reports.

A version is one registry directory (``manifest.json``, the ONNX files, ``MODEL_CARD.md``; see
models/registry.py) sent as a tar.gz archive. Before anything is stored the archive is unpacked and checked as
an agent would check it: the manifest's schema, every file's sha256 against the manifest, and each ONNX file
loaded by models.runtime. The archive itself is kept in the database, so every API replica serves the same
bytes and none keeps files. Agents pull the promoted version of each task for their asset types
(``promoted``), check the archive's sha256, and report back the versions they could not run.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import tarfile
import tempfile
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer

from models import registry, runtime
from models.errors import ModelError
from plant.wire import from_us, now_us
from twin import audit
from twin.auth import Principal
from twin.errors import Conflict, InvalidRequest, NotFound
from twin.tables import ModelFailure, ModelPromotion, ModelVersion, TwinNode

log = structlog.get_logger(__name__)

VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+\-]{0,63}$")  # a directory name on every gateway
_CARD_AND_MANIFEST = {registry.MANIFEST, registry.MODEL_CARD}
_UNPACKED_RATIO = 4  # unpacked bytes allowed per archive byte limit: ONNX weights compress little
_HEADER_SLACK = 1 << 20  # tar headers and padding beyond the files themselves
_MAX_MEMBERS = 64  # entries an archive may list: a model directory holds a few files


@dataclass(frozen=True, slots=True)
class CheckedArchive:
    """An archive that passed every check.

    Args:
        manifest: its manifest.
        files: file name → bytes, as unpacked.
        variants: the variants whose ONNX file it holds (others the manifest lists may be left out).
    """

    manifest: dict[str, Any]
    files: dict[str, bytes]
    variants: list[str]


def version_key(version: str) -> tuple[int, ...]:
    """Versions compared numerically, part by part, as models.registry.latest does."""
    return tuple(int(x) if x.isdigit() else 0 for x in version.split("."))


def pack(directory: Path) -> bytes:
    """A registry model directory as the archive ``upload`` takes: the manifest, the model card and the variant
    files present, at the top; byte-for-byte the same for the same files (no timestamps or owners)."""
    try:
        manifest = registry.read_manifest(directory)
    except ModelError as exc:
        raise InvalidRequest(str(exc)) from None
    names = [registry.MANIFEST, registry.MODEL_CARD, *(e["file"] for e in manifest["variants"].values())]
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped, tarfile.open(fileobj=zipped, mode="w") as tar:
        for name in sorted(set(names)):
            path = directory / name
            if not path.is_file():
                continue  # a variant left out (a large teacher kept elsewhere)
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def unpack(data: bytes, max_bytes: int) -> dict[str, bytes]:
    """The files of a model archive by name; InvalidRequest says why an archive is refused.

    Accepts the files at the top of the archive or in one directory (``tar czf m.tgz 1.2.0/``). Refuses links,
    devices, absolute or ``..`` paths and deeper trees, so nothing can be written outside a model directory.
    """
    budget = max_bytes * _UNPACKED_RATIO
    # Streamed, and every decompressed byte counted (tar headers too: tarfile reads a pax header whole), so a
    # small archive cannot make the API hold gigabytes before the file sizes are even looked at.
    stream = _Bounded(gzip.GzipFile(fileobj=io.BytesIO(data)), budget)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            return _read_members(tar, budget)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise InvalidRequest(f"not a gzip-compressed tar archive ({exc})") from None


class _Bounded(io.RawIOBase):
    """A readable stream that refuses to yield more than ``budget`` bytes of ``source`` (plus tar headers)."""

    def __init__(self, source: gzip.GzipFile, budget: int) -> None:
        self._source, self._left, self._budget = source, budget + _HEADER_SLACK, budget

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._source.readinto(buffer)
        self._left -= n
        if self._left < 0:
            raise _too_large(self._budget)
        return n


def _too_large(limit: int) -> InvalidRequest:
    return InvalidRequest(
        f"archive unpacks to more than a model may hold ({limit} bytes, {_UNPACKED_RATIO} × TWIN_MODEL_MAX_BYTES): "
        "pack only the model directory's files, or raise TWIN_MODEL_MAX_BYTES for a larger model"
    )


def _read_members(tar: tarfile.TarFile, budget: int) -> dict[str, bytes]:
    limit = budget  # the budget is spent below; the message names the whole of it
    files: dict[str, bytes] = {}
    folders: set[tuple[str, ...]] = set()
    for count, member in enumerate(tar, 1):
        if count > _MAX_MEMBERS:
            raise InvalidRequest(
                f"archive holds more than {_MAX_MEMBERS} entries: pack only the model directory's files "
                "(manifest.json, MODEL_CARD.md and the ONNX files it lists)"
            )
        path = PurePosixPath(member.name)
        parts = [p for p in path.parts if p != "."]
        if path.is_absolute() or ".." in parts or len(parts) > 2:
            raise InvalidRequest(f"archive member {member.name!r} is outside a model directory")
        if not parts and not member.isdir():
            raise InvalidRequest(f"archive member {member.name!r} has no file name")
        if member.isdir():
            continue
        if not member.isfile():
            raise InvalidRequest(f"archive member {member.name!r} is not a regular file")
        folders.add(tuple(parts[:-1]))
        if len(folders) > 1:
            raise InvalidRequest("archive holds more than one model directory")
        budget -= member.size
        if budget < 0:
            raise _too_large(limit)
        if parts[-1] in files:
            raise InvalidRequest(f"archive holds {parts[-1]!r} twice")
        handle = tar.extractfile(member)
        assert handle is not None  # a regular file
        files[parts[-1]] = handle.read()
    return files


def check_archive(data: bytes, max_bytes: int) -> CheckedArchive:
    """Unpack and check an archive as an agent would load it; InvalidRequest with the reason otherwise."""
    if len(data) > max_bytes:
        raise InvalidRequest(f"archive of {len(data)} bytes exceeds the limit of {max_bytes}")
    files = unpack(data, max_bytes)
    if registry.MANIFEST not in files:
        raise InvalidRequest(f"archive has no {registry.MANIFEST}")
    try:
        manifest = json.loads(files[registry.MANIFEST])
        registry.check_manifest(manifest, Path("archive"))
    except ValueError as exc:
        raise InvalidRequest(f"unreadable {registry.MANIFEST} ({exc})") from None
    except ModelError as exc:
        raise InvalidRequest(str(exc)) from None
    try:
        variants = _present_variants(manifest, files)
        _load_each(files, variants)
    except (KeyError, TypeError, AttributeError, IndexError) as exc:  # a field of the wrong shape
        raise InvalidRequest(f"malformed {registry.MANIFEST} ({type(exc).__name__}: {exc})") from None
    return CheckedArchive(manifest, files, variants)


def _present_variants(manifest: dict[str, Any], files: dict[str, bytes]) -> list[str]:
    """The variants whose file the archive holds; the version, file names and default variant checked."""
    version = str(manifest["version"])
    if not VERSION_RE.match(version):
        raise InvalidRequest(f"version {version!r}: use letters, digits and . _ + - (at most 64)")
    listed = {str(entry["file"]): variant for variant, entry in manifest["variants"].items()}
    if any("/" in name or name in ("", ".", "..") for name in listed):
        raise InvalidRequest("manifest names a variant file outside its model directory")
    stray = sorted(set(files) - set(listed) - _CARD_AND_MANIFEST)
    if stray:
        raise InvalidRequest(f"archive holds files the manifest does not list: {stray}")
    for variant, entry in manifest["variants"].items():
        if not isinstance(entry.get("metrics", {}), dict):
            raise InvalidRequest(f"variant {variant}: metrics must be an object")
    variants = sorted(variant for name, variant in listed.items() if name in files)
    if manifest["default_variant"] not in variants:
        raise InvalidRequest(f"archive lacks the default variant {manifest['default_variant']!r}")
    return variants


def _load_each(files: dict[str, bytes], variants: list[str]) -> None:
    """Load every variant the archive holds with the runtime the agents use (sha256, ONNX, input schema)."""
    with tempfile.TemporaryDirectory(prefix="ft-model-") as tmp:
        directory = write_files(Path(tmp), files)
        for variant in variants:
            try:
                runtime.load(directory, variant)
            except ModelError as exc:
                raise InvalidRequest(
                    f"{variant} does not load: {str(exc).replace(str(directory), 'archive')}"
                ) from None


def write_files(directory: Path, files: dict[str, bytes]) -> Path:
    """Write unpacked archive files into ``directory`` (names were checked by ``unpack``); returns it."""
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def upload(
    session: Session, data: bytes, by: str, max_bytes: int, actor: Principal | None = None
) -> tuple[ModelVersion, bool]:
    """Check and store an archive; returns the row and whether it is new (an identical one is kept).

    Conflict if the task and version exist with other content: a version, once uploaded, never changes.
    A new version is recorded in the audit trail as ``actor``'s, in the transaction that stores it.
    """
    checked = check_archive(data, max_bytes)
    manifest = checked.manifest
    task, version = str(manifest["task"]), str(manifest["version"])
    existing = _find(session, task, version)
    if existing is None:
        row = ModelVersion(
            task=task,
            version=version,
            name=str(manifest["name"])[:128],
            sha256=registry.sha256_bytes(data),
            size=len(data),
            archive=data,
            manifest=manifest,
            variants=checked.variants,
            uploaded_at=now_us(),
            uploaded_by=by,
        )
        session.add(row)
        if actor is not None:
            audit.record(session, actor, "model.upload", f"model:{task}/{version}",
                         after={"name": row.name, "sha256": row.sha256, "size": row.size})
        try:
            session.commit()
        except IntegrityError:  # uploaded by another request meanwhile
            session.rollback()
            existing = _find(session, task, version)
            assert existing is not None
        else:
            log.info("model_uploaded", task=task, version=version, sha256=row.sha256, by=by, bytes=len(data))
            return row, True
    if _canonical(existing.manifest, existing.variants) != _canonical(manifest, checked.variants):
        raise Conflict(f"{task} {version} exists with other content: upload it under a new version")
    return existing, False


def _canonical(manifest: dict[str, Any], variants: list[str]) -> str:
    """Content identity: the manifest names every file's sha256, so equal manifests and files mean equal models."""
    return json.dumps([manifest, sorted(variants)], sort_keys=True)


def _find(session: Session, task: str, version: str) -> ModelVersion | None:
    return session.scalars(
        select(ModelVersion)
        .options(defer(ModelVersion.archive))
        .where(ModelVersion.task == task, ModelVersion.version == version)
    ).one_or_none()


def get(session: Session, task: str, version: str) -> ModelVersion:
    """A stored version (archive loaded on access); NotFound if there is none."""
    row = _find(session, task, version)
    if row is None:
        raise NotFound(f"no {task} model version {version}")
    return row


def list_models(session: Session) -> list[dict[str, Any]]:
    """Every version with its promotions and failure reports, by task and newest version first."""
    rows = list(session.scalars(select(ModelVersion).options(defer(ModelVersion.archive))))
    promoted: dict[int, list[str]] = defaultdict(list)
    for p in session.scalars(select(ModelPromotion).order_by(ModelPromotion.asset_type)):
        promoted[p.model_id].append(p.asset_type)
    failures: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for f in session.scalars(select(ModelFailure).order_by(ModelFailure.last_at.desc())):
        failures[f.model_id].append(_failure_dict(f))
    rows.sort(key=lambda r: version_key(r.version), reverse=True)
    rows.sort(key=lambda r: r.task)
    return [
        {
            "task": r.task,
            "name": r.name,
            "version": r.version,
            "sha256": r.sha256,
            "size": r.size,
            "variants": r.variants,
            "uploaded_at": from_us(r.uploaded_at),
            "uploaded_by": r.uploaded_by,
            "metrics": {v: e.get("metrics", {}) for v, e in r.manifest["variants"].items() if v in r.variants},
            "promoted_for": promoted[r.id],
            "failures": failures[r.id],
        }
        for r in rows
    ]


def _failure_dict(f: ModelFailure) -> dict[str, Any]:
    return {
        "gateway": f.gateway,
        "asset_type": f.asset_type,
        "reason": f.reason,
        "count": f.count,
        "first_at": from_us(f.first_at),
        "last_at": from_us(f.last_at),
    }


def promote(
    session: Session, task: str, version: str, asset_type: str, by: str, actor: Principal | None = None
) -> ModelVersion:
    """Make ``version`` the one agents run for ``asset_type`` (promoting an older one rolls back); commits,
    with a ``model.promote`` or ``model.rollback`` audit record as ``actor``'s when given."""
    row = get(session, task, version)
    _check_asset_type(session, asset_type)
    for _attempt in range(2):
        current = session.get(ModelPromotion, (asset_type, task))
        if actor is not None:
            _audit_promotion(session, actor, row, asset_type, current)
        if current is None:
            session.add(
                ModelPromotion(asset_type=asset_type, task=task, model_id=row.id, promoted_at=now_us(), promoted_by=by)
            )
        else:
            current.model_id, current.promoted_at, current.promoted_by = row.id, now_us(), by
        try:
            session.commit()
            break
        except IntegrityError:  # promoted by another request meanwhile: update that row instead
            session.rollback()
    log.info("model_promoted", task=task, version=version, asset_type=asset_type, by=by)
    return row


def _audit_promotion(
    session: Session, actor: Principal, row: ModelVersion, asset_type: str, current: ModelPromotion | None
) -> None:
    was = None if current is None else session.scalar(
        select(ModelVersion.version).where(ModelVersion.id == current.model_id)
    )
    back = was is not None and version_key(row.version) < version_key(was)
    audit.record(session, actor, "model.rollback" if back else "model.promote", f"model:{row.task}/{asset_type}",
                 before={"version": was}, after={"version": row.version})


def _check_asset_type(session: Session, asset_type: str) -> None:
    """Refuse an asset type the twin does not know, once the site is loaded (a typo would reach no agent)."""
    known = {t for t in session.scalars(select(TwinNode.type).distinct()) if t is not None}
    if known and asset_type not in known:
        raise InvalidRequest(f"unknown asset type {asset_type!r}; the site has {sorted(known)}")


def promoted(session: Session) -> dict[str, dict[str, dict[str, str]]]:
    """asset type → task → {version, sha256} of the versions promoted."""
    out: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
    rows = session.execute(
        select(ModelPromotion.asset_type, ModelPromotion.task, ModelVersion.version, ModelVersion.sha256)
        .join(ModelVersion, ModelVersion.id == ModelPromotion.model_id)
        .order_by(ModelPromotion.asset_type, ModelPromotion.task)
    )
    for asset_type, task, version, sha256 in rows:
        out[asset_type][task] = {"version": version, "sha256": sha256}
    return dict(out)


def report_failure(session: Session, task: str, version: str, gateway: str, asset_type: str, reason: str) -> None:
    """Record that ``gateway`` could not run a version for ``asset_type``; a repeat updates and counts. Commits."""
    row = get(session, task, version)
    now = now_us()
    for _attempt in range(2):
        found = session.scalars(
            select(ModelFailure).where(
                ModelFailure.model_id == row.id, ModelFailure.gateway == gateway, ModelFailure.asset_type == asset_type
            )
        ).one_or_none()
        if found is None:
            session.add(
                ModelFailure(
                    model_id=row.id,
                    gateway=gateway,
                    asset_type=asset_type,
                    reason=reason,
                    count=1,
                    first_at=now,
                    last_at=now,
                )
            )
        else:
            found.reason, found.count, found.last_at = reason, found.count + 1, now
        try:
            session.commit()
            break
        except IntegrityError:  # the same gateway reported twice at once: count on the row stored first
            session.rollback()
    log.warning(
        "model_failure_reported", task=task, version=version, gateway_id=gateway, asset_type=asset_type, reason=reason
    )


def with_teacher(session: Session, task: str) -> list[tuple[str, str]]:
    """(version, archive sha256) of the stored versions of ``task`` that hold a teacher, newest first."""
    rows = session.execute(
        select(ModelVersion.version, ModelVersion.sha256, ModelVersion.variants).where(ModelVersion.task == task)
    ).all()
    found = [(version, sha) for version, sha, variants in rows if "teacher" in variants]
    return sorted(found, key=lambda r: version_key(r[0]), reverse=True)


def archive(session: Session, task: str, version: str) -> tuple[bytes, str]:
    """A stored version's archive bytes and their sha256."""
    row = session.execute(
        select(ModelVersion.archive, ModelVersion.sha256).where(
            ModelVersion.task == task, ModelVersion.version == version
        )
    ).one_or_none()
    if row is None:
        raise NotFound(f"no {task} model version {version}")
    return bytes(row.archive), row.sha256
