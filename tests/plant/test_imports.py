"""plant/ is the contract both sides share: it imports nothing of ours and no platform or edge library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import plant

FORBIDDEN = ("twin", "edge_agent", "models", "factory_twin", "fastapi", "starlette", "sqlalchemy", "httpx", "paho")


def test_plant_imports_only_pydantic_and_the_standard_library() -> None:
    modules = sorted(f"plant.{p.stem}" for p in Path(plant.__file__).parent.glob("*.py") if p.stem != "__init__")
    code = (
        f"import sys\nfor m in {modules!r}: __import__(m)\n"
        f"print(sorted({{n.split('.')[0] for n in sys.modules}} & set({FORBIDDEN!r})))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout
