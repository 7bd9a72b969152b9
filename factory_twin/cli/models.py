"""`factory-twin models`: train, evaluate and report the diagnostic models (rul, faults, anomaly)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

TASKS = ("rul", "faults", "anomaly")
VARIANTS = ("teacher", "student", "student-int8")
REGISTRY = Path(__file__).resolve().parents[2] / "models" / "registry"


def _datasets_root() -> Path:
    default = Path(__file__).resolve().parents[3] / "shared" / "datasets"
    return Path(os.environ.get("FACTORY_TWIN_DATASETS", default))


def _paths(data: tuple[Path, ...], extra: tuple[Path, ...]) -> list[Path]:
    paths = [*data, *extra]
    if not paths:
        raise click.UsageError("give the data files with --data PATH (several allowed)")
    return paths


def _model_dir(task: str, model: Path) -> Path:
    from models import registry

    if (model / registry.MANIFEST).is_file():
        return model
    return registry.latest(model, task)


def _jsonable(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not k.startswith("_")}


@click.group()
@click.option("--log-level", default="WARNING", show_default=True, help="log level (logs go to stderr)")
def models(log_level: str) -> None:
    """Diagnostic models: train teachers and edge students, evaluate them, report against targets."""
    from factory_twin.logs import configure_logging

    configure_logging(level=log_level)  # stdout stays for results (one JSON object with --json)


@models.command()
@click.argument("task", type=click.Choice(TASKS))
@click.argument("extra", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--data", multiple=True, type=click.Path(exists=True, path_type=Path), help="data file or folder")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=REGISTRY, show_default=True)
@click.option("--version", "version", default=None, help="default: the task's current version")
def train(task: str, extra: tuple[Path, ...], data: tuple[Path, ...], out: Path, version: str | None) -> None:
    """Build TASK's teacher and students from data in its own format into OUT/TASK/VERSION."""
    from models import tasks
    from models.errors import ModelError

    try:
        directory = tasks.train(
            task,
            _paths(data, extra),
            out,
            version or tasks.version_of(task),
            progress=lambda m: click.echo(m, err=True),
        )
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(str(directory))


@models.command()
@click.argument("task", type=click.Choice(TASKS))
@click.argument("extra", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--model", "model", type=click.Path(exists=True, path_type=Path), default=REGISTRY, show_default=True)
@click.option("--data", multiple=True, type=click.Path(exists=True, path_type=Path))
@click.option("--truth", type=click.Path(exists=True, path_type=Path), default=None, help="RUL_FD00x file")
@click.option("--variant", type=click.Choice(VARIANTS), default=None, help="default: the edge variant")
@click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout")
def evaluate(
    task: str,
    extra: tuple[Path, ...],
    model: Path,
    data: tuple[Path, ...],
    truth: Path | None,
    variant: str | None,
    as_json: bool,
) -> None:
    """Score one variant of a TASK model on data in the data set's own format."""
    from models import tasks
    from models.errors import ModelError

    try:
        result = tasks.evaluate(task, _model_dir(task, model), _paths(data, extra), truth, variant)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(_jsonable(result), sort_keys=True))
        return
    for key, value in _jsonable(result).items():
        click.echo(f"{key:>24}  {value:.4f}" if isinstance(value, float) else f"{key:>24}  {value}")


@models.command()
@click.option("--registry", "root", type=click.Path(exists=True, path_type=Path), default=REGISTRY, show_default=True)
@click.option("--datasets", "data_root", type=click.Path(path_type=Path), default=None, help="data set root")
@click.option("--task", "only", type=click.Choice(TASKS), multiple=True, help="default: all three")
@click.option("--plots", type=click.Path(file_okay=False, path_type=Path), default=None, help="write PNG plots here")
@click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout")
def report(root: Path, data_root: Path | None, only: tuple[str, ...], plots: Path | None, as_json: bool) -> None:
    """Teacher / student / student-int8 per task: size, latency, throughput, metrics, targets."""
    from models import registry as reg
    from models import report as rep
    from models.errors import ModelError

    data_root = data_root or _datasets_root()
    out: dict[str, Any] = {}
    for task in only or TASKS:
        try:
            directory = reg.latest(root, task)
            rows = rep.measure(task, directory, rep.default_data(task, data_root), keep_plot=plots is not None)
        except ModelError as exc:
            raise click.ClickException(f"{task}: {exc}") from None
        checks = rep.targets(task, rows)
        if plots is not None:
            for path in rep.write_plots(task, rows, plots):
                click.echo(f"wrote {path}", err=True)
        out[task] = {"model": str(directory), "rows": [_jsonable(r) for r in rows], "targets": checks}
        if not as_json:
            click.echo(rep.table(task, rows))
            click.echo("  targets: " + ", ".join(f"{k}={v}" for k, v in checks.items()) + "\n")
    if as_json:
        click.echo(json.dumps(out, sort_keys=True))
