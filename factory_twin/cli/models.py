"""`factory-twin models`: train, evaluate and report the diagnostic models (rul, faults, anomaly), and manage the
platform's model registry (upload, list, promote) over its API."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
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
    """Diagnostic models: train teachers and edge students, evaluate, report; upload and promote on the platform."""
    from factory_twin.logs import configure_logging

    configure_logging(level=log_level)  # stdout stays for results (one JSON object with --json)


def _rows(text: str | None) -> Any:
    from models.datasets import parse_rows
    from models.errors import DataError

    if text is None:
        return None
    try:
        return parse_rows(text)
    except DataError as exc:
        raise click.BadParameter(str(exc)) from None


_ROWS_HELP = "data rows FIRST-LAST of the AI4I table (faults), e.g. 1-7000"


@models.command()
@click.argument("task", type=click.Choice(TASKS))
@click.argument("extra", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--data", multiple=True, type=click.Path(exists=True, path_type=Path), help="training data")
@click.option(
    "--test", multiple=True, type=click.Path(exists=True, path_type=Path), help="test data: scored, never fitted on"
)
@click.option("--rows", "rows_text", default=None, help="train on these " + _ROWS_HELP)
@click.option("--test-rows", "test_rows_text", default=None, help="score these " + _ROWS_HELP)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=REGISTRY, show_default=True)
@click.option("--version", "version", default=None, help="default: the task's current version")
def train(
    task: str,
    extra: tuple[Path, ...],
    data: tuple[Path, ...],
    test: tuple[Path, ...],
    rows_text: str | None,
    test_rows_text: str | None,
    out: Path,
    version: str | None,
) -> None:
    """Build TASK's teacher and students from training data in its own format into OUT/TASK/VERSION.

    Only the training data is fitted and tuned on. Test data (--test; for rul, test and RUL files among the data
    are recognised by name) is scored for the model card; without it each task reports on its own held-out part.
    """
    from models import tasks
    from models.errors import ModelError

    try:
        directory = tasks.train(
            task,
            _paths(data, extra),
            out,
            version or tasks.version_of(task),
            progress=lambda m: click.echo(m, err=True),
            test=test,
            rows=_rows(rows_text),
            test_rows=_rows(test_rows_text),
        )
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(str(directory))


@models.command()
@click.argument("task", type=click.Choice(("rul", "anomaly")))
@click.option(
    "--data", multiple=True, required=True, type=click.Path(exists=True, path_type=Path), help="training data"
)
@click.option(
    "--test",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="test data: the chosen options are scored on it once, after the choice",
)
@click.option(
    "--remaining",
    default=None,
    metavar="LOW-HIGH",
    help="rul: the remaining life (cycles, LOW < r <= HIGH) test engines are documented to be truncated at; "
    "default: any cycle",
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object")
def select(task: str, data: tuple[Path, ...], test: tuple[Path, ...], remaining: str | None, as_json: bool) -> None:
    """Choose TASK's recipe options on validation built from the training data alone.

    rul: the label cap and the mean-residual-life tail, by engine-grouped folds of training engines truncated at
    random cycles (with --remaining, only cycles whose remaining life lies in that documented range) and scored
    against their true remaining life. anomaly: window, alarm rate and threshold rule,
    leaving one training file out at a time. With --test, the choice is then scored on the test data.
    """
    from models import selection
    from models.errors import ModelError

    progress = (lambda m: click.echo(m, err=True)) if not as_json else (lambda _m: None)
    if remaining is not None and task != "rul":
        raise click.BadParameter("only rul truncates engines", param_hint="--remaining")
    try:
        if task == "rul":
            within = _remaining_range(remaining)
            result = selection.rul_cap(list(data), progress, within)
            if test:
                name = str(result["chosen"])
                cap = float(name.split()[1])
                result["test"] = selection.rul_test(list(data), list(test), cap, name.endswith("tail"), within)
        else:
            result = selection.anomaly_recipe(list(data), progress)
            if test:
                result["test"] = selection.anomaly_test(list(data), list(test), result["chosen"])
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result, default=float))
        return
    click.echo(selection.table(task, result))


def _remaining_range(text: str | None) -> tuple[float, float] | None:
    """``LOW-HIGH`` as two cycle counts; a usage error naming the option otherwise."""
    if text is None:
        return None
    low, _, high = text.partition("-")
    try:
        return float(low), float(high)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not LOW-HIGH in cycles (e.g. 0-145)", param_hint="--remaining") from None


@dataclass(frozen=True)
class _Scoring:
    """TASK, data files and the model variant to score, as given on the command line."""

    task: str
    extra: tuple[Path, ...]
    model: Path
    data: tuple[Path, ...]
    truth: Path | None
    variant: str | None
    split: bool
    rows_text: str | None

    def directory(self) -> Path:
        return _model_dir(self.task, self.model)

    def paths(self) -> list[Path]:
        return _paths(self.data, self.extra)

    def rows(self) -> Any:
        return _rows(self.rows_text)


def _scoring_options(variant_help: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """TASK, data files and the model variant to score, passed as one ``scoring``: what ``evaluate`` and
    ``cascade`` share."""

    def apply(command: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(command)
        def with_scoring(**kwargs: Any) -> None:
            scoring = _Scoring(**{name: kwargs.pop(name) for name in (f.name for f in fields(_Scoring))})
            command(scoring=scoring, **kwargs)

        existing = click.Path(exists=True, path_type=Path)
        options = [
            click.argument("task", type=click.Choice(TASKS)),
            click.argument("extra", nargs=-1, type=existing),
            click.option("--model", type=existing, default=REGISTRY, show_default=True),
            click.option("--data", multiple=True, type=existing, help="data file or folder"),
            click.option("--truth", type=existing, default=None, help="RUL_FD00x file"),
            click.option("--variant", type=click.Choice(VARIANTS), default=None, help=variant_help),
            click.option(
                "--split",
                is_flag=True,
                help="score only the task's internal held-out part (faults: the model's held-out rows; anomaly: "
                "the files it was not trained on); default: every row given",
            ),
            click.option("--rows", "rows_text", default=None, help="score these " + _ROWS_HELP),
        ]
        for option in reversed(options):
            with_scoring = option(with_scoring)
        return with_scoring

    return apply


@models.command()
@_scoring_options("default: the edge variant")
@click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout")
def evaluate(scoring: _Scoring, as_json: bool) -> None:
    """Score one variant of a TASK model on data in the data set's own format: every row, unless --split."""
    from models import tasks
    from models.errors import ModelError

    try:
        result = tasks.evaluate(
            scoring.task,
            scoring.directory(),
            scoring.paths(),
            scoring.truth,
            scoring.variant,
            split=scoring.split,
            rows=scoring.rows(),
        )
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(_jsonable(result), sort_keys=True))
        return
    click.echo(f"scored: {result.get('protocol', '?')}")
    for key, value in _jsonable(result).items():
        if key == "protocol":
            continue
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
            rows = rep.measure(
                task, directory, rep.default_data(task, data_root), plots is not None, rep.DEFAULT_ROWS.get(task)
            )
        except ModelError as exc:
            raise click.ClickException(f"{task}: {exc}") from None
        checks = rep.targets(task, rows)
        if plots is not None:
            for path in rep.write_plots(task, rows, plots):
                click.echo(f"wrote {path}", err=True)
        cascade = rep.recorded_cascade(directory)
        out[task] = {"model": str(directory), "rows": [_jsonable(r) for r in rows], "targets": checks}
        out[task]["cascade"] = cascade
        if not as_json:
            click.echo(rep.table(task, rows))
            if cascade is not None:
                click.echo("  " + rep.cascade_text(cascade))
            click.echo("  targets: " + ", ".join(f"{k}={v}" for k, v in checks.items()) + "\n")
    if as_json:
        click.echo(json.dumps(out, sort_keys=True))


@models.command("cascade")
@_scoring_options("the student; default: the edge variant")
@click.option(
    "--teacher",
    "teacher_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="a model directory holding the same teacher (a teacher over 2 MB is not committed)",
)
@click.option("--max-offload", type=click.FloatRange(0.0, 1.0), default=0.10, show_default=True)
@click.option("--write", is_flag=True, help="store the result as the manifest's cascade section")
@click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout")
def cascade_command(
    scoring: _Scoring, teacher_dir: Path | None, max_offload: float, write: bool, as_json: bool
) -> None:
    """Student, teacher and cascade on TASK's data (every row, or --split); the threshold offloading ≤ MAX_OFFLOAD."""
    from models import cascade_threshold
    from models.errors import ModelError

    try:
        directory = scoring.directory()
        result = cascade_threshold.run(
            scoring.task,
            directory,
            scoring.paths(),
            scoring.truth,
            scoring.variant,
            teacher_dir,
            max_offload,
            scoring.split,
            scoring.rows(),
        )
        if write:
            cascade_threshold.write(directory, result)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"model": str(directory), **result}, sort_keys=True))
        return
    click.echo(cascade_threshold.summary(scoring.task, directory, result))
    if write:
        click.echo(f"written to {directory / 'manifest.json'}", err=True)


@models.command()
@click.option("--model", "model", type=click.Path(exists=True, path_type=Path), default=REGISTRY, show_default=True)
@click.option("--data", multiple=True, type=click.Path(exists=True, path_type=Path), help="default: <datasets>/skab")
@click.option("--baseline-rows", type=click.IntRange(min=1), default=400, show_default=True, help="healthy rows")
@click.option(
    "--quantile",
    type=float,
    default=0.99,
    show_default=True,
    help="the adapted threshold is at least this quantile of the healthy scores (EDGE_BASELINE_QUANTILE)",
)
@click.option("--variant", type=click.Choice(VARIANTS), default=None, help="default: the edge variant")
@click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout")
def adaptation(
    model: Path, data: tuple[Path, ...], baseline_rows: int, quantile: float, variant: str | None, as_json: bool
) -> None:
    """Per-machine baselines on SKAB: each file scored against the default baseline and against its own."""
    from models import adaptation as adapt
    from models import runtime
    from models.errors import ModelError

    try:
        loaded = runtime.load(_model_dir("anomaly", model), variant)
        result = adapt.skab(loaded, list(data) or [_datasets_root() / "skab"], baseline_rows, quantile)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result, sort_keys=True) if as_json else adapt.table(result))


@models.command()
@click.argument("task", type=click.Choice(TASKS))
@click.argument("extra", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--feedback", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--platform", "platform_url", default=None, help="the platform's API to read the feedback from")
@click.option("--key", envvar="FACTORY_TWIN_KEY", default=None, help="an engineer API key (FACTORY_TWIN_KEY)")
@click.option("--since", default=None, help="only feedback recorded at or after (ISO 8601 with time zone)")
@click.option("--data", multiple=True, type=click.Path(exists=True, path_type=Path), help="data file or folder")
@click.option("--truth", type=click.Path(exists=True, path_type=Path), default=None, help="RUL_FD00x file")
@click.option("--model", "model", type=click.Path(exists=True, path_type=Path), default=REGISTRY, show_default=True)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="where the new version goes"
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout")
def retrain(
    task: str,
    extra: tuple[Path, ...],
    feedback: Path | None,
    platform_url: str | None,
    key: str | None,
    since: str | None,
    data: tuple[Path, ...],
    truth: Path | None,
    model: Path,
    out: Path,
    as_json: bool,
) -> None:
    """Train a new version of TASK with maintenance feedback; old against new on the same held-out data.

    The new version goes to OUT only: nothing is uploaded or promoted.
    """
    from models import retrain as rt
    from models.errors import ModelError

    if (feedback is None) == (platform_url is None):
        raise click.UsageError("give the feedback with --feedback FILE.json or --platform URL --key KEY")
    if platform_url is not None and not key:
        raise click.UsageError("--platform needs --key (an engineer API key)")
    try:
        directory = _model_dir(task, model)
        if feedback is not None:
            raws = rt.read_file(feedback)
        else:
            raws = rt.fetch_from(str(platform_url), str(key), task, directory, since)
        result = rt.retrain(
            task, directory, raws, _paths(data, extra), out, truth, progress=lambda m: click.echo(m, err=True)
        )
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result, sort_keys=True) if as_json else rt.table(result))


# The platform's model registry, over its REST API (twin/api/routes/models.py).
_PLATFORM = click.option(
    "--platform",
    "platform_url",
    envvar="FACTORY_TWIN_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="the platform's API (FACTORY_TWIN_URL)",
)
_KEY = click.option("--key", envvar="FACTORY_TWIN_KEY", required=True, help="an API key (FACTORY_TWIN_KEY)")


def _call(method: str, url: str, key: str, **kwargs: Any) -> Any:
    """One API request; the problem's detail as a ClickException when it fails."""
    import httpx

    try:
        response = httpx.request(method, url, headers={"Authorization": f"Bearer {key}"}, timeout=120, **kwargs)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach the platform at {url}: {exc}") from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise click.ClickException(f"{response.status_code}: {detail}")
    return response


@models.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_PLATFORM
@_KEY
def upload(directory: Path, platform_url: str, key: str) -> None:
    """Upload the registry model DIRECTORY (manifest.json, ONNX files, model card) to the platform."""
    from plant.platform_api import MODELS, url
    from twin.errors import InvalidRequest
    from twin.model_registry import pack

    try:
        data = pack(directory)
    except InvalidRequest as exc:
        raise click.ClickException(str(exc)) from None
    response = _call("POST", url(platform_url, MODELS), key, content=data)
    body = response.json()
    state = "uploaded" if response.status_code == 201 else "already uploaded"
    click.echo(f"{state} {body['task']} {body['version']} ({body['name']}, sha256 {body['sha256'][:12]}…)")


@models.command(name="list")
@_PLATFORM
@_KEY
@click.option("--json", "as_json", is_flag=True, help="the API's JSON")
def list_(platform_url: str, key: str, as_json: bool) -> None:
    """List the platform's model versions, the asset types each is promoted for, and reported failures."""
    from plant.platform_api import MODELS, url

    body = _call("GET", url(platform_url, MODELS), key).json()
    if as_json:
        click.echo(json.dumps(body, sort_keys=True))
        return
    for m in body["items"]:
        promoted = ",".join(m["promoted_for"]) or "-"
        failed = f"  {len(m['failures'])} failure report(s)" if m["failures"] else ""
        click.echo(f"{m['task']:<8} {m['version']:<10} {m['name']:<24} promoted: {promoted}{failed}")
    if not body["items"]:
        click.echo("no models yet: `factory-twin models upload DIR`", err=True)


@models.command()
@click.argument("task", type=click.Choice(TASKS))
@click.argument("version")
@click.option("--asset-type", required=True, help="the asset type whose agents should run this version")
@_PLATFORM
@_KEY
def promote(task: str, version: str, asset_type: str, platform_url: str, key: str) -> None:
    """Have the agents of an asset type run VERSION of TASK (promoting an older version rolls back)."""
    from plant.platform_api import PROMOTE, url

    _call("POST", url(platform_url, PROMOTE, task=task, version=version), key, json={"asset_type": asset_type})
    click.echo(f"promoted {task} {version} for {asset_type}")
