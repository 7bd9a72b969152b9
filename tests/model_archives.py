"""Model directories and archives for the model lifecycle tests, made from the committed registry."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from models import registry
from twin.db import make_engine, make_sessionmaker
from twin.tables import Base, TwinNode

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = ROOT / "models" / "registry"


def model_copy(
    dest: Path,
    task: str = "anomaly",
    version: str = "1.0.0",
    *,
    new_version: str | None = None,
    drop: tuple[str, ...] = (),
    edit: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """A copy of a committed model under ``dest/<task>/<version>``: renumbered, variants dropped, manifest edited."""
    source = REGISTRY / task / version
    target = dest / task / (new_version or version)
    target.mkdir(parents=True)
    manifest = json.loads((source / registry.MANIFEST).read_text())
    manifest["version"] = new_version or version
    for variant in drop:
        manifest["variants"].pop(variant)
    if edit is not None:
        edit(manifest)
    for entry in manifest["variants"].values():
        if (source / entry["file"]).is_file():
            shutil.copyfile(source / entry["file"], target / entry["file"])
    (target / registry.MANIFEST).write_text(json.dumps(manifest, indent=2))
    shutil.copyfile(source / registry.MODEL_CARD, target / registry.MODEL_CARD)
    return target


def set_file(directory: Path, name: str, data: bytes, *, update_manifest: bool) -> None:
    """Replace a variant file; with ``update_manifest`` its sha256 and size follow (a consistent but new model)."""
    (directory / name).write_bytes(data)
    if update_manifest:
        manifest = json.loads((directory / registry.MANIFEST).read_text())
        for entry in manifest["variants"].values():
            if entry["file"] == name:
                entry["sha256"], entry["bytes"] = registry.sha256_bytes(data), len(data)
        (directory / registry.MANIFEST).write_text(json.dumps(manifest, indent=2))


def tar_gz(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    """A tar.gz of (name, bytes) files and prepared members (links, devices) as given."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
                continue
            name, data = member
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def files_of(directory: Path) -> list[tuple[str, bytes]]:
    """A model directory's files as (name, bytes), for building odd archives from a good model."""
    return [(p.name, p.read_bytes()) for p in sorted(directory.iterdir()) if p.is_file()]


def pump_twin(url: str) -> Iterator[Engine]:
    """A fresh twin schema at ``url`` holding one machine, p1, of asset type pump; disposed after."""
    yield from machine_twin(url, "p1", "pump")


def machine_twin(url: str, node: str, asset_type: str) -> Iterator[Engine]:
    """A fresh twin schema at ``url`` holding one machine of an asset type; disposed after."""
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    yield add_machine(engine, node, asset_type)
    engine.dispose()


def add_machine(engine: Engine, node: str, asset_type: str) -> Engine:
    """``engine``, its twin now holding one machine of an asset type."""
    with make_sessionmaker(engine)() as s:
        s.add(TwinNode(id=node, parent_id=None, path=f"/{node}/", kind="machine", name=node, type=asset_type))
        s.commit()
    return engine
