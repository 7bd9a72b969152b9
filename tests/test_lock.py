"""requirements.lock (the platform) and requirements-edge.lock (a gateway), the production installs: every runtime
dependency of the role pinned there, in a version its requirement allows, every pin with at least one SHA-256
(pip install --require-hashes), and the edge at the platform's versions without the platform's packages."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCKS = {"requirements.lock": ("platform",), "requirements-edge.lock": ()}  # lock → the extras it installs


def _project() -> dict[str, Any]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert isinstance(project, dict)
    return project


def _locked(name: str) -> dict[str, tuple[str, list[str]]]:
    """{canonical name: (version, hashes)} from a lock file."""
    text = (ROOT / name).read_text()
    out: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=\S)", text):
        head = re.match(r"([A-Za-z0-9._-]+)(\[[^\]]*\])?==([^\s;\\]+)", block)
        if head:
            out[canonicalize_name(head.group(1))] = (head.group(3), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return out


def _names(specs: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(s).name) for s in specs}


@pytest.mark.parametrize("lock", LOCKS)
def test_every_runtime_dependency_is_pinned_with_hashes_in_a_version_it_allows(lock: str) -> None:
    project = _project()
    specs = [*project["dependencies"], *(s for extra in LOCKS[lock] for s in project["optional-dependencies"][extra])]
    locked = _locked(lock)
    missing, outside = [], []
    for spec in specs:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        if name not in locked:
            missing.append(req.name)
        elif not req.specifier.contains(locked[name][0], prereleases=True):
            outside.append(f"{req.name} {locked[name][0]} not in {req.specifier}")
    assert not missing, f"not in {lock} (run scripts/lock): {missing}"
    assert not outside, f"{lock} is behind pyproject.toml (run scripts/lock): {outside}"


@pytest.mark.parametrize("lock", LOCKS)
def test_every_pin_has_hashes_and_the_build_backend_is_locked_too(lock: str) -> None:
    locked = _locked(lock)
    assert len(locked) > 20
    assert [name for name, (_version, hashes) in locked.items() if not hashes] == []
    assert "setuptools" in locked  # the image builds the project with --no-build-isolation
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    for spec in build:
        req = Requirement(spec)
        assert req.specifier.contains(locked[canonicalize_name(req.name)][0])


@pytest.mark.parametrize("lock", LOCKS)
def test_development_tools_and_training_stay_out_of_the_production_locks(lock: str) -> None:
    extras = _project()["optional-dependencies"]
    dev = _names(extras["dev"]) | _names(extras["train"]) | {"scipy"}
    assert dev & set(_locked(lock)) == set()


def test_the_edge_runs_the_platforms_versions_without_the_platforms_packages() -> None:
    edge, platform = _locked("requirements-edge.lock"), _locked("requirements.lock")
    assert {name: edge[name] for name in edge} == {name: platform.get(name) for name in edge}
    assert _names(_project()["optional-dependencies"]["platform"]) & set(edge) == set()
    assert {"starlette", "greenlet", "psycopg-binary"} & set(edge) == set()
