"""plant/ is what both sides share: the contract modules import nothing of ours and no platform or edge library;
plant/mqtt/, the one MQTT client, adds paho and nothing else; the platform's and the command line's modules reach
MQTT through it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import factory_twin
import plant
import twin

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


def _imports(path: Path) -> set[str]:
    """The top-level packages a module's source imports (at any depth of its code)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_the_command_line_speaks_mqtt_through_plant_mqtt_only() -> None:
    root = Path(factory_twin.__file__).parent
    modules = [p for p in sorted(root.rglob("*.py")) if p != root / "logs.py"]  # logs.py names paho's logger
    assert len(modules) > 20
    assert [str(p.relative_to(root)) for p in modules if "paho" in _imports(p)] == []


def test_no_module_of_the_platform_imports_paho() -> None:
    root = Path(twin.__file__).parent
    modules = sorted(root.rglob("*.py"))
    assert len(modules) > 20
    assert [str(p.relative_to(root)) for p in modules if "paho" in _imports(p)] == []
    assert "paho" in _imports(Path(plant.__file__).parent / "mqtt" / "client.py")  # the check sees an import
