"""requirements.lock, the production install: every runtime dependency of pyproject.toml pinned there, in a
version its requirement allows, and every pin with at least one SHA-256 (pip install --require-hashes)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _locked() -> dict[str, tuple[str, list[str]]]:
    """{canonical name: (version, hashes)} from requirements.lock."""
    text = (ROOT / "requirements.lock").read_text()
    out: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=\S)", text):
        head = re.match(r"([A-Za-z0-9._-]+)(\[[^\]]*\])?==([^\s;\\]+)", block)
        if head:
            out[canonicalize_name(head.group(1))] = (head.group(3), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return out


def test_every_runtime_dependency_is_pinned_with_hashes_in_a_version_it_allows() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = _locked()
    missing, outside = [], []
    for spec in project["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        if name not in locked:
            missing.append(req.name)
        elif not req.specifier.contains(locked[name][0], prereleases=True):
            outside.append(f"{req.name} {locked[name][0]} not in {req.specifier}")
    assert not missing, f"not in requirements.lock (run scripts/lock): {missing}"
    assert not outside, f"requirements.lock is behind pyproject.toml (run scripts/lock): {outside}"


def test_every_pin_has_hashes_and_the_build_backend_is_locked_too() -> None:
    locked = _locked()
    assert len(locked) > 20
    assert [name for name, (_version, hashes) in locked.items() if not hashes] == []
    assert "setuptools" in locked  # the image builds the project with --no-build-isolation
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    for spec in build:
        req = Requirement(spec)
        assert req.specifier.contains(locked[canonicalize_name(req.name)][0])


def test_development_tools_stay_out_of_the_production_lock() -> None:
    locked = _locked()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dev = {canonicalize_name(Requirement(s).name) for s in project["optional-dependencies"]["dev"]}
    assert dev & set(locked) == set()
