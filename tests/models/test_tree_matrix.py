"""Tree ensembles compiled to matrices (tree_matrix.trees_to_matrix_onnx): same function, and quantizable to int8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import LinearRegression

from models.errors import TrainingError
from models.export import quadratic_score_onnx, quantize_int8, sklearn_to_onnx
from models.tree_matrix import trees_to_matrix_onnx

STUDENT = Path(__file__).resolve().parents[2] / "models" / "registry" / "rul" / "1.1.0" / "student.onnx"
NOT_ONE_ENSEMBLE = r"a single ai\.onnx\.ml TreeEnsembleRegressor"
LEAVES = "trees/leaves"  # the one-hot reached leaves (n, trees, 1, leaves) inside the compiled graph


def run(model_bytes: bytes, X: NDArray[np.float32], outputs: list[str] | None = None) -> list[NDArray[np.float32]]:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return list(session.run(outputs, {"features": X}))


def exposing(model_bytes: bytes, name: str) -> bytes:
    """The graph with an inner tensor added as an output."""
    model = onnx.load_from_string(model_bytes)
    model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return bytes(model.SerializeToString())


def split_points(model_bytes: bytes) -> dict[int, NDArray[np.float32]]:
    """The float32 thresholds the ensemble compares each feature with."""
    (node,) = onnx.load_from_string(model_bytes).graph.node
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    points: dict[int, list[float]] = {}
    for mode, feature, value in zip(attrs["nodes_modes"], attrs["nodes_featureids"], attrs["nodes_values"]):
        if mode == b"BRANCH_LEQ":
            points.setdefault(feature, []).append(value)
    return {f: np.asarray(v, dtype=np.float32) for f, v in points.items()}


def probing_inputs(model_bytes: bytes, n_features: int, n: int, seed: int = 0) -> NDArray[np.float32]:
    """Rows whose values sit on the thresholds, one float32 step either side of them, or between them."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n, n_features), dtype=np.float32)
    for feature, points in split_points(model_bytes).items():
        on = rng.choice(points, n)
        step = rng.choice([-np.inf, 0.0, np.inf], n).astype(np.float32)
        between = rng.uniform(points.min() - 1, points.max() + 1, n).astype(np.float32)
        X[:, feature] = np.where(rng.random(n) < 0.7, np.nextafter(on, step), between)
    return X


@pytest.fixture(scope="module")
def small_gbr() -> tuple[bytes, int]:
    """A small boosted-tree regressor with uneven trees, ties and integer-valued features, as skl2onnx exports it."""
    rng = np.random.default_rng(1)
    X = np.column_stack([rng.integers(0, 5, 400), rng.normal(size=400), rng.uniform(-3, 3, (400, 3))])
    y = X[:, 0] * 2 + np.sin(X[:, 1] * 3) + (X[:, 2] > 0) * X[:, 3] + rng.normal(scale=0.1, size=400)
    model = GradientBoostingRegressor(n_estimators=40, max_depth=4, min_samples_leaf=15, random_state=0).fit(X, y)
    return sklearn_to_onnx(model, X.shape[1]), X.shape[1]


@pytest.fixture(scope="module")
def student() -> tuple[bytes, int]:
    """The shipped RUL student: 300 trees of depth 4 over 127 features."""
    return STUDENT.read_bytes(), 127


@pytest.fixture(params=["small_gbr", "student"])
def ensemble(request: pytest.FixtureRequest) -> tuple[bytes, int]:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


def test_matrix_graph_equals_tree_ensemble(ensemble: tuple[bytes, int]) -> None:
    trees, width = ensemble
    matrix = trees_to_matrix_onnx(trees)
    graph, original = onnx.load_from_string(matrix).graph, onnx.load_from_string(trees).graph
    assert [n.op_type for n in graph.node if n.domain not in ("", "ai.onnx")] == []
    assert (graph.input, graph.output) == (original.input, original.output)
    X = np.vstack([probing_inputs(trees, width, 3000), np.random.default_rng(2).normal(size=(200, width)) * 100])
    X = np.vstack([X, np.full((1, width), np.inf), np.full((1, width), -np.inf)]).astype(np.float32)
    (expected,) = run(trees, X)
    (got,) = run(matrix, X)
    assert got.shape == expected.shape == (len(X), 1)
    assert np.abs(got - expected).max() <= 1e-3


def test_int8_graph_reaches_the_same_leaves(ensemble: tuple[bytes, int]) -> None:
    trees, width = ensemble
    matrix = trees_to_matrix_onnx(trees)
    int8 = quantize_int8(matrix)
    graph = onnx.load_from_string(int8).graph
    assert [n.op_type for n in graph.node].count("MatMulInteger") == 2
    assert "MatMul" not in {n.op_type for n in graph.node}
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    assert weights["trees/paths_quantized"].dtype == weights["trees/leaf_values_quantized"].dtype == np.int8
    # 7-bit weights: uint8 x int8 products summed in pairs stay within int16 on CPUs without VNNI (AVX2)
    assert max(int(np.abs(weights[w].astype(np.int32)).max()) for w in weights if w.endswith("_quantized")) <= 64

    X = probing_inputs(trees, width, 3000, seed=3)
    fp32_out, fp32_leaves = run(exposing(matrix, LEAVES), X, ["variable", LEAVES])
    int8_out, int8_leaves = run(exposing(int8, LEAVES), X, ["variable", LEAVES])
    np.testing.assert_array_equal(int8_leaves, fp32_leaves)
    n_trees = weights["trees/paths_quantized"].shape[0]
    assert (fp32_leaves.reshape(len(X), n_trees, -1).sum(axis=2) == 1).all()  # one leaf per tree, never a pad

    # Each tree's leaves are quantized as a share of its own largest, which a float scale restores.
    fp32_weights = {i.name: numpy_helper.to_array(i) for i in onnx.load_from_string(matrix).graph.initializer}
    unit_values = fp32_weights["trees/leaf_values"].reshape(n_trees, -1)
    tree_scale = fp32_weights["trees/tree_scale"].reshape(n_trees, 1)
    assert np.abs(unit_values).max(axis=1) == pytest.approx(1.0)
    scale = float(weights["trees/leaf_values_scale"])
    assert scale == pytest.approx(1 / 64, rel=1e-6)
    dequantized = weights["trees/leaf_values_quantized"].astype(np.float64).reshape(n_trees, -1) * scale * tree_scale
    base = float(weights["trees/base"][0])
    per_tree = fp32_leaves.reshape(len(X), n_trees, -1)
    np.testing.assert_allclose(int8_out.ravel(), np.einsum("ntl,tl->n", per_tree, dequantized) + base, atol=1e-3)
    # every leaf within half an int8 step of its tree's scale: the bound per row is the sum over the trees
    assert np.abs(int8_out - fp32_out).max() <= float(tree_scale.sum()) * scale / 2 + 1e-3


def test_other_graphs_are_refused(small_gbr: tuple[bytes, int]) -> None:
    rng = np.random.default_rng(0)
    linear = sklearn_to_onnx(LinearRegression().fit(rng.normal(size=(20, 3)), rng.normal(size=20)), 3)
    with pytest.raises(TrainingError, match=NOT_ONE_ENSEMBLE):
        trees_to_matrix_onnx(linear)
    with pytest.raises(TrainingError, match=NOT_ONE_ENSEMBLE):
        trees_to_matrix_onnx(quadratic_score_onnx(np.zeros(3), np.eye(3)))
    with pytest.raises(TrainingError, match=NOT_ONE_ENSEMBLE):
        trees_to_matrix_onnx(trees_to_matrix_onnx(small_gbr[0]))


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("post_transform", "PROBIT", "post_transform PROBIT"),
        ("aggregate_function", "AVERAGE", "aggregate_function AVERAGE"),
        ("nodes_modes", "BRANCH_LT", "BRANCH_LT"),
        ("n_targets", 2, "single-target"),
    ],
)
def test_unsupported_ensembles_are_refused(
    small_gbr: tuple[bytes, int], name: str, value: object, message: str
) -> None:
    model = onnx.load_from_string(small_gbr[0])
    (node,) = model.graph.node
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if name == "nodes_modes":
        value = [m if m == b"LEAF" else value for m in attrs[name]]
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, value)])
    with pytest.raises(TrainingError, match=message):
        trees_to_matrix_onnx(model.SerializeToString())
