"""Where the example plant (``examples/plant.yaml``) and its data slices (``examples/data/``) are found.

The examples live once, at the top of the repository, and are found in this order:

1. ``$FACTORY_TWIN_EXAMPLES``, when set (a directory holding ``plant.yaml`` and ``data/``);
2. the source tree this package runs from (a clone, or an editable install): ``<repo>/examples``;
3. an installed wheel: ``<prefix>/share/factory-twin/examples``, where the wheel's data files put them
   (pyproject ``[tool.setuptools.data-files]``), for the environment's prefix and the user base.

So ``factory-twin simulate`` and ``factory-twin demo`` work from a clone and from an installed package alike.
"""

from __future__ import annotations

import os
import site
import sys
from pathlib import Path

from factory_twin.simulator.errors import SliceError

ENV_VAR = "FACTORY_TWIN_EXAMPLES"
_SHARE = Path("share") / "factory-twin" / "examples"


def _candidates() -> list[Path]:
    found = []
    if os.environ.get(ENV_VAR):
        found.append(Path(os.environ[ENV_VAR]))
    found.append(Path(__file__).resolve().parents[2] / "examples")
    found.append(Path(sys.prefix) / _SHARE)
    if site.USER_BASE:
        found.append(Path(site.USER_BASE) / _SHARE)
    return found


def examples_dir() -> Path:
    """The directory holding the example ``plant.yaml`` and ``data/``; SliceError listing where it looked."""
    candidates = _candidates()
    for path in candidates:
        if (path / "plant.yaml").is_file():
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise SliceError(
        f"example plant not found (looked in {looked}); set {ENV_VAR} to a directory with plant.yaml"
    )


def example_site_path() -> Path:
    """The example plant's site file."""
    return examples_dir() / "plant.yaml"


def data_dir() -> Path:
    """The directory of the data slices the simulator replays."""
    return examples_dir() / "data"
