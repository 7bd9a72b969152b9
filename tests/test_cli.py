"""The `factory-twin` command as a user runs it: a real process, real exit codes, real output."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "factory_twin", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, check=False)


def test_help_lists_every_group() -> None:
    out = _run("--help").stdout
    for group in ("demo", "serve", "agent", "simulate", "db", "models", "keys", "users"):
        assert group in out


@dataclass
class DemoRun:
    """A ``demo --for 12 --json`` run and the data directory it left."""

    data_dir: Path
    proc: subprocess.CompletedProcess[str]
    lock_left: str


@pytest.fixture(scope="module")
def json_demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """One demo run with a JSON summary; the banner test restarts the demo on its data directory."""
    data_dir = tmp_path_factory.mktemp("demo")
    proc = _run("demo", "--for", "12", "--json", "--port", "0", "--data-dir", str(data_dir))
    return DemoRun(data_dir, proc, (data_dir / ".demo.lock").read_text())


@pytest.mark.slow
def test_demo_for_json_summary(json_demo: DemoRun) -> None:
    proc = json_demo.proc
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["values_ingested"] > 0
    assert summary["nodes_updated"] == 3
    assert summary["rejected"] == 0
    assert summary["alerts_flapping"] == 0
    assert summary["alerts_raised"] >= 0
    assert "first_alert_s" in summary
    assert not json_demo.lock_left  # let go at the end: the next run may take it
    assert "admin key" not in proc.stderr  # the banner is for a person at a terminal, not for --json


def test_a_second_demo_refuses_a_data_directory_another_run_holds(tmp_path: Path) -> None:
    from factory_twin.datadir import DataDirLock

    (tmp_path / "twin.db").write_text("the other run's data")
    with DataDirLock(tmp_path) as held:
        held.note(dashboard="http://127.0.0.1:8000/")
        proc = _run("demo", "--for", "5", "--json", "--fresh", "--port", "0", "--data-dir", str(tmp_path), timeout=60)
    assert proc.returncode == 1
    assert (
        f"{tmp_path} is in use by another demo (pid {os.getpid()}, dashboard http://127.0.0.1:8000/): stop that one, "
        f"or give this one its own directory: factory-twin demo --data-dir {tmp_path}-2"
    ) in proc.stderr.replace("\n", " ")
    assert (tmp_path / "twin.db").read_text() == "the other run's data"  # --fresh deleted nothing


def test_serve_refuses_outdated_schema(tmp_path: Path) -> None:
    proc = _run("serve", env={"TWIN_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}", "TWIN_HTTP_PORT": "0"},
                timeout=60)
    assert proc.returncode == 2
    assert "factory-twin db upgrade" in proc.stderr


@pytest.mark.slow
def test_the_demo_shows_one_admin_key_per_data_directory_in_a_banner_not_in_the_log(json_demo: DemoRun) -> None:
    """A restart on the JSON run's data directory shows that run's admin key, once, in a banner on stderr."""
    data_dir = json_demo.data_dir
    assert json_demo.proc.returncode == 0, json_demo.proc.stderr[-2000:]
    proc = _run("demo", "--for", "3", "--port", "0", "--data-dir", str(data_dir), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r"admin key\s+(ftk_[0-9a-f]{12}_\S+)", proc.stderr)
    assert found, proc.stderr[-2000:]
    key = found.group(1)
    logged = [line for line in proc.stderr.splitlines() if line.startswith("{")]
    assert logged  # the log is JSON off a terminal...
    assert not [line for line in logged if key in line or key[17:] in line]  # ...and never carries the key
    assert f"factory-twin users create alice --role technician --data-dir {data_dir}" in proc.stderr
    credentials = data_dir / "demo-credentials.json"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert key in credentials.read_text()
    assert "the same as last run" in proc.stderr  # a restart shows the same key: no new admin key per run
    listed = _run("keys", "list", "--json", "--data-dir", str(data_dir))
    admins = [k for k in map(json.loads, listed.stdout.splitlines()) if k["role"] == "admin"]
    assert [k["prefix"] for k in admins] == [key[:16]]
