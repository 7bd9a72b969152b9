"""The code base stays lint-clean (ruff, configured in pyproject.toml)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    proc = subprocess.run([ruff, "check", "--no-cache", str(ROOT)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:]


@pytest.mark.slow
def test_mypy_finds_nothing() -> None:
    # The packages pyproject's [tool.mypy] names are typed, strictly; tests and benchmarks are not checked.
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[dev]')")
    command = [sys.executable, "-m", "mypy", "--no-incremental"]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:]


# The one-way graph of docs/architecture.md: what each package may import of ours. Tests and benchmarks are
# tools around the code, never imported by it; migrations/ is wired by the shell (factory_twin/), not by twin/.
OURS = {"plant", "edge_agent", "twin", "models", "factory_twin", "migrations", "tests", "benchmarks"}
MAY_IMPORT = {
    "plant": {"plant"},
    "models": {"models", "plant"},
    "edge_agent": {"edge_agent", "models", "plant"},
    "twin": {"twin", "models", "plant"},
    "migrations": {"migrations", "twin", "plant"},
    "factory_twin": {"factory_twin", "edge_agent", "twin", "models", "plant", "migrations"},
}


def _imports_of_ours(path: Path) -> set[str]:
    """The packages of ours a module imports (at the top or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_imports_follow_the_arrows(package: str) -> None:
    wrong = {
        str(path.relative_to(ROOT)): sorted(_imports_of_ours(path) - MAY_IMPORT[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert not {k: v for k, v in wrong.items() if v}, f"{package}/ may import only {sorted(MAY_IMPORT[package])}"


# One name per concept: two production classes of the same name must be the same concept. Each pair kept here says
# why; a new clash fails until one of the classes is renamed for what it holds or the pair is added with its reason.
PRODUCTION = ("twin", "edge_agent", "plant", "models", "factory_twin")
SAME_NAME_ALLOWED = {
    # the same concept, each in its own package's error tree (twin/errors.py, edge_agent/errors.py): settings that
    # cannot be used. The two packages never import each other, so the names never meet.
    "ConfigError": "twin/errors.py edge_agent/errors.py",
    # amqtt reads a plugin's options from a nested class that must be called Config (twin/broker.py, twice).
    "Config": "twin/broker.py twin/broker.py",
}


def _classes() -> dict[str, list[str]]:
    """Every class of the production packages by name, with the modules defining it."""
    found: dict[str, list[str]] = {}
    for package in PRODUCTION:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef):
                    found.setdefault(node.name, []).append(path.relative_to(ROOT).as_posix())
    return found


def test_one_class_name_per_concept() -> None:
    clashes = {name: " ".join(sorted(paths)) for name, paths in _classes().items() if len(paths) > 1}
    allowed = {name: " ".join(sorted(where.split())) for name, where in SAME_NAME_ALLOWED.items()}
    unexplained = {name: where for name, where in clashes.items() if allowed.get(name) != where}
    assert not unexplained, f"classes sharing a name (rename one, or allow it and say why): {unexplained}"
    stale = allowed.keys() - clashes.keys()
    assert not stale, f"allowed clashes that no longer exist: {sorted(stale)}"


# Routes parse, authorise, call a service and shape the answer: the queries are the services' (twin/*.py). The
# readiness probe is the exception: running ``SELECT 1`` on the database is what it reports on.
QUERIES_ALLOWED = {"twin/api/routes/health.py"}


def test_routes_leave_queries_to_services() -> None:
    routes = [*sorted((ROOT / "twin/api/routes").glob("*.py")), ROOT / "twin/dashboard/api.py"]
    building = {}
    for path in routes:
        name = path.relative_to(ROOT).as_posix()
        imported = {
            node.module
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sqlalchemy")
        }
        if imported - {"sqlalchemy.orm"} and name not in QUERIES_ALLOWED:
            building[name] = sorted(imported)
    assert not building, f"routes building queries (move them to a service module): {building}"
