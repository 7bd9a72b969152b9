"""Edge footprint: the size of an edge-only install, and the agent's resident memory on the demo plant.

Install. A virtualenv gets ``pip install '.[edge]'`` of this checkout (the wheel, with the committed ONNX models,
not an editable install) into a virtualenv made without pip (``venv --without-pip``; this interpreter's pip installs
into it with ``--python``, as the edge image drops pip after installing): a gateway runs the agent, it does not
install packages. Its site-packages is measured as ``du -sm`` does (blocks allocated, MiB). None of the platform's
or the training's packages may be in it (scikit-learn, SciPy, pandas, matplotlib, FastAPI, ...). Target: 250 MB.

Memory. The demo's platform (embedded broker, SQLite, ingest, REST API: ``factory_twin.stack``) and its simulator
(the example plant's three machines at the demo's pace) run in this process, from this interpreter; the agent
runs from the edge virtualenv as its own process, ``factory-twin agent run`` on the demo's site with the demo's
links to the platform (uplink, cascade questions, model downloads). Its resident set size is sampled every second;
the peak (``VmHWM``) and the last sample are reported. Target: 150 MB. The run counts only if values and
diagnoses reach the twin (at the demo's pace the mill's come first; the engine's RUL needs 15 cycles of 5 s, the
pump's anomaly score a learnt baseline).

``--quick`` (under a minute): no virtualenv is built. An edge virtualenv already at ``--venv`` is measured and its
agent used; without one, the agent runs from this interpreter with the platform and training packages blocked
(``tests/edge/edge_install.py``), and the size is that of the base install's distributions as installed here (the
files their RECORDs list), the project's own files not counted. A 15 s run instead of 150 s.

    python benchmarks/edge_footprint.py [--quick] [--venv DIR] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZE_TARGET_MB = 250
RSS_TARGET_MB = 150
NOT_ON_THE_EDGE = ("scikit-learn", "scipy", "pandas", "matplotlib", "fastapi", "starlette", "uvicorn", "sqlalchemy",
                   "alembic", "psycopg", "amqtt", "onnx", "skl2onnx")  # fmt: skip
DEFAULT_VENV = Path(tempfile.gettempdir()) / "factory-twin-edge"


def _quiet() -> None:
    import logging

    import structlog

    logging.disable(logging.WARNING)
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def build_venv(venv: Path) -> float:
    """A fresh virtualenv with this checkout's edge install; returns the seconds it took."""
    started = time.monotonic()
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    with tempfile.TemporaryDirectory() as build:  # a copy, so the build leaves nothing in the checkout
        src = Path(build) / "src"
        shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "var", "*.egg-info", "build",
                                                                  "__pycache__", ".mypy_cache", ".ruff_cache"))
        subprocess.run([*_pip(venv), "install", "-q", f"{src}[edge]"], check=True)
    return time.monotonic() - started


def _site_packages(venv: Path) -> Path:
    (found,) = venv.glob("lib/python3*/site-packages")
    return found


def _du_mb(path: Path) -> float:
    """Blocks allocated under ``path``, in MiB (``du -sm``), each file counted once."""
    seen: set[int] = set()
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in [".", *files]:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_blocks * 512
    return total / 2**20


def _pip(venv: Path) -> list[str]:
    """This interpreter's pip, acting on ``venv`` (which has none of its own)."""
    return [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]


def venv_install(venv: Path) -> dict[str, Any]:
    """Size and distributions of an edge virtualenv."""
    site = _site_packages(venv)
    done = subprocess.run([*_pip(venv), "list", "--format=json"], check=True, capture_output=True, text=True)
    dists = {d["name"].lower().replace("_", "-") for d in json.loads(done.stdout)}
    largest = sorted(((_du_mb(p), p.name) for p in site.iterdir() if p.is_dir()), reverse=True)[:6]
    total = _du_mb(site)
    return {
        "how": f"du -sm {site} (a virtualenv without pip)",
        "site_packages_mb": round(total),
        "distributions": len(dists),
        "largest_mb": {name: round(mb) for mb, name in largest},
        "not_on_the_edge_present": sorted(dists & set(NOT_ON_THE_EDGE)),
    }


def _base_closure() -> set[str]:
    """The distributions the base install needs, as installed in this interpreter's environment."""
    from packaging.requirements import Requirement

    todo, seen = ["factory-twin"], set()
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        for spec in metadata.requires(name) or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen - {"factory-twin"}


def estimated_install() -> dict[str, Any]:
    """Size of the base install's distributions as installed here (no virtualenv built)."""
    names = _base_closure()
    size = 0
    for name in names:
        for file in metadata.distribution(name).files or []:
            path = Path(str(file.locate()))
            if path.is_file():
                size += os.lstat(path).st_blocks * 512
    return {
        "how": "the base install's distributions as installed in this environment (RECORD files), project excluded",
        "site_packages_mb": round(size / 2**20),
        "distributions": len(names),
        "not_on_the_edge_present": sorted(names & set(NOT_ON_THE_EDGE)),
    }


def _rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return rss / 1024, peak / 1024


def agent_on_the_demo(agent_cmd: list[str], seconds: float, work: Path) -> dict[str, Any]:
    """The demo's platform and simulator here, the agent as ``agent_cmd``; its memory while it runs."""
    from sqlalchemy import func, select

    from factory_twin.simulator import Simulator, SimulatorConfig
    from factory_twin.simulator.examples import data_dir
    from factory_twin.stack import Stack, StackConfig
    from plant.site import load_site
    from twin.db import make_sessionmaker
    from twin.tables import DiagnosisRecord

    stack = Stack(StackConfig(data_dir=work / "demo", http_port=0, paced=True))
    stack.start_platform()
    site_file = work / "demo" / "plant.yaml"  # the demo's copy of the example plant (ports, grids, owners)
    sim = Simulator(SimulatorConfig(site=load_site(site_file), data_dir=data_dir(), mqtt_url=stack.mqtt_url,
                                    paced=True))  # fmt: skip
    stop = asyncio.Event()

    async def simulate() -> None:
        async with sim:
            task = asyncio.create_task(sim.run())
            await stop.wait()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    loop = asyncio.new_event_loop()
    sim_thread = threading.Thread(target=loop.run_forever, daemon=True)
    sim_thread.start()
    simulating = asyncio.run_coroutine_threadsafe(simulate(), loop)
    env = {**os.environ, "EDGE_MQTT_URL": stack.agent_mqtt_url, "EDGE_PLATFORM_URL": stack.api_url,
           "EDGE_PLATFORM_KEY": stack.agent_key, "EDGE_LOG_JSON": "true"}  # fmt: skip
    log = (work / "agent.log").open("w")
    agent = subprocess.Popen([*agent_cmd, "agent", "run", "--site", str(site_file), "--gateway",
                              stack.config.gateway_id, "--broker", stack.agent_mqtt_url, "--data-dir",
                              str(work / "agent"), "--metrics-port", "0", "--for", str(seconds)],
                             env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work)  # fmt: skip
    samples: list[float] = []
    peak = 0.0
    try:
        while agent.poll() is None:
            rss, peak = _rss_mb(agent.pid)
            samples.append(rss)
            time.sleep(1.0)
    except FileNotFoundError:  # exited between poll and read
        pass
    finally:
        if agent.poll() is None:
            agent.terminate()
        agent.wait(30)
        log.close()
        loop.call_soon_threadsafe(stop.set)
        simulating.result(15)
        loop.call_soon_threadsafe(loop.stop)
        sim_thread.join(10)
        summary = stack.summary(seconds)
        assert stack.engine is not None
        with make_sessionmaker(stack.engine)() as session:
            diagnoses = dict(session.execute(  # type: ignore[arg-type]
                select(DiagnosisRecord.task, func.count()).group_by(DiagnosisRecord.task)).all())
        stack.stop_platform()
    output = (work / "agent.log").read_text(errors="replace")
    return {
        "assets": sorted(n.id for n in load_site(site_file).assets()),
        "seconds": seconds,
        "agent_exit": agent.returncode,
        "rss_peak_mb": round(peak, 1),
        "rss_last_mb": round(samples[-1], 1) if samples else None,
        "values_in_twin": summary.values_ingested,
        "diagnoses_in_twin": diagnoses,
        "blocked_imports": sorted(set(re.findall(r"edge install: blocked import (\S+)", output))),
        "agent_log_tail": output[-1500:] if agent.returncode else "",
    }


def main() -> None:
    """Run once and print one JSON line."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="no virtualenv built, a 15 s run (under a minute)")
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the edge virtualenv (made unless --quick)")
    ap.add_argument("--seconds", type=float, default=None, help="how long the agent runs on the demo plant")
    args = ap.parse_args()
    _quiet()
    built_s = None
    if not args.quick:
        built_s = round(build_venv(args.venv))
    has_venv = (args.venv / "bin" / "factory-twin").is_file()
    if has_venv:
        install = venv_install(args.venv)
        agent_cmd = [str(args.venv / "bin" / "factory-twin")]
        agent_from = f"{args.venv} (pip install '.[edge]')"
    else:
        install = estimated_install()
        agent_cmd = [sys.executable, str(ROOT / "tests" / "edge" / "edge_install.py")]
        agent_from = "this interpreter, the platform and training packages blocked (tests/edge/edge_install.py)"
    seconds = args.seconds or (15.0 if args.quick else 150.0)
    with tempfile.TemporaryDirectory() as d:
        run = agent_on_the_demo(agent_cmd, seconds, Path(d))
    size, rss = install["site_packages_mb"], run["rss_peak_mb"]
    ok = (size <= SIZE_TARGET_MB and rss <= RSS_TARGET_MB and not install["not_on_the_edge_present"]
          and not run["blocked_imports"] and run["values_in_twin"] > 0 and bool(run["diagnoses_in_twin"]))
    print(json.dumps({
        "name": "edge_footprint",
        "ratio": round(size / SIZE_TARGET_MB, 3),
        "baseline": f"the {SIZE_TARGET_MB} MB target for an edge install's site-packages (a virtualenv without pip)",
        "target": f"site-packages <= {SIZE_TARGET_MB} MB with none of {', '.join(NOT_ON_THE_EDGE)}; agent peak RSS "
        f"<= {RSS_TARGET_MB} MB on the demo's three machines, values and diagnoses in the twin",
        "ok": ok,
        "rss_ratio": round(rss / RSS_TARGET_MB, 3),
        "install": install,
        "venv_built_s": built_s,
        "agent_from": agent_from,
        "run": run,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
