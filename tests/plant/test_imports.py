"""plant/ is what both sides share: the contract modules import nothing of ours and no platform or edge library;
plant/mqtt/, the one MQTT client, adds paho and nothing else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import plant

FORBIDDEN = ("twin", "edge_agent", "models", "factory_twin", "fastapi", "starlette", "sqlalchemy", "httpx", "paho")


def _imported(modules: list[str], forbidden: tuple[str, ...]) -> str:
    code = (
        f"import sys\nfor m in {modules!r}: __import__(m)\n"
        f"print(sorted({{n.split('.')[0] for n in sys.modules}} & set({forbidden!r})))"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_plant_imports_only_pydantic_and_the_standard_library() -> None:
    modules = sorted(f"plant.{p.stem}" for p in Path(plant.__file__).parent.glob("*.py") if p.stem != "__init__")
    assert _imported(modules, FORBIDDEN) == "[]"


def test_the_mqtt_client_adds_only_paho() -> None:
    modules = sorted(f"plant.mqtt.{p.stem}" for p in (Path(plant.__file__).parent / "mqtt").glob("*.py"))
    assert len(modules) > 3
    assert _imported(modules, tuple(f for f in FORBIDDEN if f != "paho")) == "[]"
