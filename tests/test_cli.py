"""The `factory-twin` command as a user runs it: a real process, real exit codes, real output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "factory_twin", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, check=False)


def test_help_lists_every_group() -> None:
    out = _run("--help").stdout
    for group in ("demo", "serve", "agent", "simulate", "db", "models", "keys"):
        assert group in out


@pytest.mark.slow
def test_demo_for_json_summary(tmp_path: Path) -> None:
    proc = _run("demo", "--for", "12", "--json", "--port", "0", "--data-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["values_ingested"] > 0
    assert summary["nodes_updated"] == 3
    assert summary["rejected"] == 0


def test_serve_refuses_outdated_schema(tmp_path: Path) -> None:
    proc = _run("serve", env={"TWIN_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}", "TWIN_HTTP_PORT": "0"},
                timeout=60)
    assert proc.returncode == 2
    assert "factory-twin db upgrade" in proc.stderr
