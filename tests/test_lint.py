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
