"""The window feature code shared by training and the runtime."""

from __future__ import annotations

import numpy as np
import pytest

from models import anomaly, faults, rul
from models.features import features, pad_oldest, series_features, sliding_windows


def test_sliding_windows_match_padded_last_windows() -> None:
    rows = np.arange(30, dtype=np.float64).reshape(10, 3)
    windows = sliding_windows(rows, 4, 2)
    assert windows.shape == (9, 4, 3)
    for end in range(1, 10):
        assert np.array_equal(windows[end - 1], pad_oldest(rows[: end + 1], 4))


def test_features_reject_misshapen_windows() -> None:
    with pytest.raises(ValueError, match="windows must be"):
        features(np.zeros((1, rul.SPEC.window - 1, len(rul.SPEC.signals))), rul.SPEC)


def test_rul_features_of_a_linear_trend() -> None:
    n, s = rul.SPEC.window, len(rul.SPEC.signals)
    window = np.tile(np.arange(n, dtype=np.float64)[:, None], (1, s))
    feats = features(window[None], rul.SPEC)[0]
    sensors = s - 1
    assert feats[0] == n - 1  # cycle count
    assert np.allclose(feats[1 + 3 * sensors : 1 + 4 * sensors], 1.0)  # slope block


def test_fault_margins_computed_in_float64() -> None:
    # Air 300.0 K and process 308.6 K sit exactly on the 8.6 K heat-dissipation rule: the margin must be 0,
    # not float32 noise that flips the rule.
    window = np.array([[[0.0, 300.0, 308.6, 1300.0, 40.0, 10.0]]])
    feats = features(window, faults.SPEC)[0]
    assert abs(feats[9]) < 1e-9


@pytest.mark.parametrize("spec", [rul.SPEC, anomaly.SPEC, faults.SPEC], ids=["rul", "anomaly", "faults"])
def test_single_window_path_matches_the_batch_features(spec) -> None:
    # The edge's series_features and the training side's features must be the same numbers.
    rng = np.random.default_rng(0)
    windows = 50.0 + rng.standard_normal((3, spec.window, len(spec.signals)))
    if spec.categories:
        windows[:, :, 0] = 1.0
    batch = features(windows, spec)
    for i in range(3):
        assert np.allclose(series_features(np.ascontiguousarray(windows[i].T), spec), batch[i], rtol=1e-12, atol=1e-9)
    with pytest.raises(ValueError, match="series must be"):
        series_features(windows[0], spec)


def test_anomaly_features_of_a_known_window() -> None:
    spec = anomaly.SPEC
    t = np.arange(spec.window, dtype=np.float64)
    window = np.tile((2.0 * t + 5.0)[:, None], (1, len(spec.signals)))
    feats = features(window[None], spec)[0].reshape(4, -1)
    assert np.allclose(feats[0], 2.0 * t.mean() + 5.0)  # mean
    assert np.allclose(feats[1], 2.0 * t.std())  # std
    assert np.allclose(feats[2], 2.0)  # slope
    assert np.allclose(feats[3], 2.0 * t[-1] + 5.0)  # last


def _graph_features(windows: np.ndarray, spec) -> np.ndarray:
    import onnxruntime as ort

    from models.export import window_features_onnx

    session = ort.InferenceSession(window_features_onnx(spec), providers=["CPUExecutionProvider"])
    return session.run(["raw_features"], {"window": windows})[0]


def test_window_feature_graph_equals_features_py_on_real_windows(datasets) -> None:
    # The edge student computes the anomaly features in ONNX: generated from the same FeatureSpec, they must be
    # the numbers features.py gives, on real SKAB windows (steady and faulty parts alike).
    from models.datasets import load_skab

    spec = anomaly.SPEC
    frame = load_skab([datasets / "skab" / "valve1" / "0.csv"])[0]
    rows = frame[list(spec.signals)].to_numpy(dtype=np.float64)
    windows = sliding_windows(rows, spec.window, spec.window)
    expected = features(windows, spec)
    got = _graph_features(windows, spec)
    assert got.dtype == np.float64
    assert got.shape == expected.shape
    assert np.allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_window_feature_graph_of_a_known_window_and_other_recipes_refused() -> None:
    from models.errors import TrainingError
    from models.export import window_features_nodes

    spec = anomaly.SPEC
    t = np.arange(spec.window, dtype=np.float64)
    window = np.tile((2.0 * t + 5.0)[:, None], (1, len(spec.signals)))[None]
    assert np.allclose(_graph_features(window, spec), features(window, spec), rtol=1e-12)
    with pytest.raises(TrainingError, match="no ONNX form"):
        window_features_nodes(rul.SPEC)
