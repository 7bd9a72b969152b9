"""Runs ``factory-twin`` (or a piece of Python) as on an edge-only install (``pip install .[edge]``).

Importing a package that only the ``platform`` or ``train`` extras bring, or the platform's own code, fails as it
would there; each such attempt is also reported on stderr (``edge install: blocked import NAME``), so a test sees
one that a library caught and went on from.

    python tests/edge/edge_install.py agent run --site plant.yaml ...      # factory-twin's arguments
    python tests/edge/edge_install.py -c 'import edge_agent.agent'          # Python code
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
# the extras' top-level packages (and what they pull in that the base install does not), and our platform code
NOT_ON_THE_EDGE = frozenset({
    "sklearn", "scipy", "pandas", "matplotlib", "onnx", "skl2onnx",  # train
    "fastapi", "fastapi_offline", "starlette", "uvicorn", "sqlalchemy", "alembic", "psycopg", "amqtt",  # platform
    "twin", "migrations",
})  # fmt: skip
BLOCKED = "edge install: blocked import"


class _EdgeOnly(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        top = fullname.partition(".")[0]
        if top in NOT_ON_THE_EDGE:
            print(f"{BLOCKED} {fullname}", file=sys.stderr, flush=True)
            raise ModuleNotFoundError(f"No module named {top!r} (not in the edge install)", name=top)
        return None


def main(argv: list[str]) -> None:
    already = NOT_ON_THE_EDGE & {name.partition(".")[0] for name in sys.modules}
    assert not already, f"imported before the blocker: {already}"
    sys.meta_path.insert(0, _EdgeOnly())
    sys.path.insert(0, str(ROOT))
    if argv[:1] == ["-c"]:
        exec(compile(argv[1], "<edge-only>", "exec"), {"__name__": "__main__"})
        return
    from factory_twin.cli import cli

    cli.main(argv, prog_name="factory-twin")


if __name__ == "__main__":
    main(sys.argv[1:])
