"""The edge runtime on the committed models: loading checks, window validation, prediction fields."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from models import registry, runtime
from models.errors import ModelLoadError, WindowRejected


def _window(model: runtime.LoadedModel, length: int | None = None) -> dict[str, list[object]]:
    """A plausible window: each signal about its probe value (1 without one), varying by 1 %; operating settings
    exactly at a regime the model knows."""
    spec = model.spec
    n = length or spec.window
    rng = np.random.default_rng(0)
    probe = model.probe_window()
    settings = spec.signals[1 : 1 + spec.regimes.settings] if spec.regimes is not None else ()
    window: dict[str, list[object]] = {}
    for name in spec.signals:
        if name in spec.categories:
            window[name] = [spec.categories[name][0]] * n
        elif name == "cycle":
            window[name] = [float(i + 1) for i in range(n)]
        elif name in settings:
            window[name] = [probe[name][0]] * n
        else:
            level = float(probe[name][0]) or 1.0  # type: ignore[arg-type]
            window[name] = (level * (1.0 + 0.01 * rng.standard_normal(n))).tolist()
    return window


def test_loads_default_variant_and_predicts(committed: Path) -> None:
    model = runtime.load(committed)
    assert model.variant == model.manifest["default_variant"]
    prediction = model.predict(_window(model), units=dict(zip(model.spec.signals, model.spec.units, strict=True)))
    assert 0.0 <= prediction.confidence <= 1.0
    if model.task == "rul":
        assert prediction.rul is not None
        assert prediction.rul_low is not None
        assert prediction.rul_high is not None
        assert prediction.rul_low <= prediction.rul <= prediction.rul_high
        assert prediction.unit == "cycle"
    elif model.task == "faults":
        assert prediction.label in model.manifest["output"]["labels"]
        assert prediction.probability is not None
        assert 0.0 <= prediction.probability <= 1.0
    else:
        assert prediction.score is not None
        assert prediction.threshold is not None
        assert prediction.label in {"normal", "anomaly"}


def test_every_variant_loads(committed: Path) -> None:
    manifest = registry.read_manifest(committed)
    for variant, entry in manifest["variants"].items():
        if not (committed / entry["file"]).is_file():
            continue  # a teacher over 2 MB is not committed
        model = runtime.load(committed, variant)
        assert math.isfinite(model.predict(_window(model)).confidence)


def test_batch_equals_single(committed: Path) -> None:
    model = runtime.load(committed)
    windows = [_window(model), _window(model)]
    windows[1] = {k: (v[::-1] if k != "cycle" else v) for k, v in windows[1].items()}
    assert model.predict_batch(windows) == [model.predict(w) for w in windows]
    assert model.predict_batch([]) == []


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        ("nan", "nan"),
        ("missing", "missing_signal"),
        ("short", "wrong_length"),
        ("long", "wrong_length"),
        ("ragged", "wrong_length"),
        ("unit", "wrong_unit"),
        ("text", "bad_value"),
    ],
)
def test_bad_windows_are_refused_with_a_reason(committed: Path, spoil: str, reason: str) -> None:
    model = runtime.load(committed)
    spec = model.spec
    window = _window(model)
    numeric = next(s for s in spec.signals if s not in spec.categories)
    units = None
    if spoil == "nan":
        window[numeric][-1] = float("nan")
    elif spoil == "missing":
        del window[numeric]
    elif spoil == "short":
        window = _window(model, spec.min_window - 1) if spec.min_window > 1 else {k: [] for k in window}
    elif spoil == "long":
        window = _window(model, spec.window + 1)
    elif spoil == "ragged":
        window[numeric] = window[numeric][:-1]
    elif spoil == "unit":
        units = {numeric: "furlongs"}
    elif spoil == "text":
        window[numeric][0] = "twelve"
    with pytest.raises(WindowRejected) as caught:
        model.predict(window, units)
    assert caught.value.reason == reason


def test_short_window_padded_by_declared_policy(registry_root: Path) -> None:
    model = runtime.load(registry.latest(registry_root, "rul"))
    assert model.manifest["input"]["policy"]["short"] == "pad_oldest"
    short = _window(model, model.spec.min_window)
    padded = {k: [v[0]] * (model.spec.window - len(v)) + v for k, v in short.items()}
    assert model.predict(short) == model.predict(padded)


def test_unit_spellings_are_accepted(registry_root: Path) -> None:
    model = runtime.load(registry.latest(registry_root, "faults"))
    window = {"product_type": ["M"], "air_temperature": [298.1], "process_temperature": [308.6],
              "rotational_speed": [1551.0], "torque": [42.8], "tool_wear": [0.0]}  # fmt: skip
    assert model.predict(window, {"torque": "Nm"}).label == "none"
    with pytest.raises(WindowRejected):
        model.predict({**window, "product_type": ["X"]})


def test_power_failure_row_is_diagnosed(registry_root: Path) -> None:
    model = runtime.load(registry.latest(registry_root, "faults"))
    # 1 N·m at 2861 rpm is 300 W, far below the 3500 W power-failure rule.
    window = {"product_type": ["L"], "air_temperature": [298.0], "process_temperature": [308.5],
              "rotational_speed": [2861.0], "torque": [4.6], "tool_wear": [143.0]}  # fmt: skip
    assert model.predict(window).label == "PWF"


def _copy(model_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(model_dir, target, ignore=shutil.ignore_patterns("*.joblib", "*.large.onnx"))
    return target


def test_sha_mismatch_is_refused(committed: Path, tmp_path: Path) -> None:
    target = _copy(committed, tmp_path)
    manifest = registry.read_manifest(target)
    path = target / manifest["variants"][manifest["default_variant"]]["file"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="sha256"):
        runtime.load(target)


@pytest.mark.parametrize("change", ["schema", "signals", "n_features", "missing_file", "task", "graph_input"])
def test_schema_mismatch_is_refused(committed: Path, tmp_path: Path, change: str) -> None:
    target = _copy(committed, tmp_path)
    manifest = json.loads((target / registry.MANIFEST).read_text())
    if change == "schema":
        manifest["schema"] = 99
    elif change == "signals":
        manifest["input"]["signals"] = manifest["input"]["signals"][:-1]
        manifest["input"]["units"] = manifest["input"]["units"][:-1]
    elif change == "n_features":
        manifest["variants"][manifest["default_variant"]]["n_features"] += 1
    elif change == "missing_file":
        (target / manifest["variants"][manifest["default_variant"]]["file"]).unlink()
    elif change == "task":
        manifest["task"] = "weather"
    elif change == "graph_input":  # a features graph declared as taking the window, or an unknown input
        takes = manifest["variants"][manifest["default_variant"]].get("graph_input", "features")
        manifest["variants"][manifest["default_variant"]]["graph_input"] = "window" if takes == "features" else "x"
    (target / registry.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError):
        runtime.load(target)


def test_no_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="manifest"):
        runtime.load(tmp_path)


def test_anomaly_baseline(registry_root: Path) -> None:
    model = runtime.load(registry.latest(registry_root, "anomaly"))
    rows = model.manifest["baseline"]["min_rows"]
    history = _window(model, rows)
    asset = model.with_baseline(history)
    assert asset.predict({k: v[-model.spec.window :] for k, v in history.items()}).label == "normal"
    with pytest.raises(WindowRejected):
        model.with_baseline(_window(model, rows - 1))
    with pytest.raises(ModelLoadError):
        runtime.load(registry.latest(registry_root, "rul")).with_baseline(history)


def test_runtime_imports_no_training_libraries() -> None:
    import subprocess
    import sys

    code = (
        "import sys, models.runtime; "
        "bad = [m for m in ('sklearn', 'pandas', 'skl2onnx', 'twin', 'edge_agent') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_single_window_input_equals_the_batch_path(committed: Path) -> None:
    model = runtime.load(committed)
    window = _window(model)
    single = model.model_input(window)
    batch = model.transform(model.window_array(window)[None])
    takes = model.manifest["variants"][model.variant].get("graph_input", "features")
    assert single.dtype == {"features": np.float32, "window": np.float64}[takes]
    assert np.allclose(single, batch, rtol=1e-6, atol=1e-6)
    assert np.allclose(model.feature_input(window), model.feature_matrix(model.window_array(window)[None]))


def test_every_committed_version_stays_loadable(registry_root: Path) -> None:
    # The edge loads the newest version; older directories must still load and score by path.
    directories = sorted(p.parent for p in registry_root.glob(f"*/*/{registry.MANIFEST}"))
    assert {d.parent.name for d in directories} >= {"rul", "faults", "anomaly"}
    for directory in directories:
        for variant, entry in registry.read_manifest(directory)["variants"].items():
            if (directory / entry["file"]).is_file():
                model = runtime.load(directory, variant)
                assert math.isfinite(model.predict(_window(model)).confidence), (directory, variant)


def test_window_graph_scores_like_its_features_on_the_numpy_path(registry_root: Path) -> None:
    # The anomaly student computes its window features in the graph; the same Mahalanobis distance on the
    # features.py features (whitening read back from the graph) gives the same score.
    import onnx
    from onnx import numpy_helper

    directory = registry.latest(registry_root, "anomaly")
    model = runtime.load(directory, "student")
    assert model.manifest["variants"]["student"]["graph_input"] == "window"
    graph = onnx.load(directory / model.manifest["variants"]["student"]["file"]).graph
    weights = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in graph.initializer}
    rng = np.random.default_rng(1)
    windows = np.stack([model.window_array(_window(model)) for _ in range(3)])
    windows += rng.standard_normal(windows.shape) * 0.05
    expected = np.linalg.norm((model.feature_matrix(windows) - weights["center"]) @ weights["projection"], axis=1)
    got = model.raw_outputs(model.transform(windows)).reshape(-1)
    assert np.allclose(got, expected, rtol=1e-4)


def test_window_graph_without_a_baseline_is_refused(registry_root: Path) -> None:
    model = runtime.load(registry.latest(registry_root, "anomaly"), "student-int8")
    with pytest.raises(ModelLoadError, match="baseline"):
        runtime.LoadedModel(model.manifest, model.variant, model._session, None)


def test_changed_units_are_checked_again(committed: Path) -> None:
    model = runtime.load(committed)
    units = dict(zip(model.spec.signals, model.spec.units, strict=True))
    model.predict(_window(model), units=units)
    units[model.spec.signals[-1]] = "furlong"  # the same mapping, mutated: must not pass on a cached check
    with pytest.raises(WindowRejected) as info:
        model.predict(_window(model), units=units)
    assert info.value.reason == "wrong_unit"


def test_newest_version_is_loaded(committed: Path, tmp_path: Path) -> None:
    task = registry.read_manifest(committed)["task"]
    for version in ("1.0.0", "1.10.0", "1.9.3"):
        (tmp_path / task / version).mkdir(parents=True)
        shutil.copy(committed / registry.MANIFEST, tmp_path / task / version)
    assert registry.latest(tmp_path, task).name == "1.10.0"


def test_registry_files_ship_in_the_wheel(committed: Path) -> None:
    # pyproject's package data must name every committed registry file (and no training leftover).
    import fnmatch
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["package-data"]["models"]
    exclude = pyproject["tool"]["setuptools"]["exclude-package-data"]["models"]
    manifest = registry.read_manifest(committed)
    root = committed.parents[1]
    shipped = [registry.MANIFEST, registry.MODEL_CARD] + [
        e["file"] for e in manifest["variants"].values() if not e["file"].endswith(".large.onnx")
    ]
    for name in shipped:
        rel = (committed / name).relative_to(root.parent).as_posix()
        assert any(fnmatch.fnmatch(rel, p) for p in include), rel
        assert not any(fnmatch.fnmatch(rel, p) for p in exclude), rel
    assert any(fnmatch.fnmatch("registry/rul/1.0.0/teacher.large.onnx", p) for p in exclude)
