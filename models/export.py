"""ONNX export (skl2onnx, or a hand-built graph where no converter exists) and int8 quantization.

Training side only. An exported graph takes one float32 input ``features`` of shape (n, n_features), or,
for a model that computes its own window features (``graph_input: window`` in the manifest), the float64
window ``window`` (n, length, n_signals) and the baseline it is scored against; the manifest names the
output the runtime reads.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from models.errors import TrainingError
from models.features import FeatureSpec, window_statistics
from models.registry import GRAPH_INPUTS

(INPUT_NAME,) = GRAPH_INPUTS["features"]
WINDOW_INPUT, *BASELINE_INPUTS = GRAPH_INPUTS["window"]
FEATURE_NODES = "window_features/"  # name prefix of the float64 feature nodes, which int8 quantization skips
OPSET = 17


def sklearn_to_onnx(estimator: Any, n_features: int, classifier: bool = False, n_outputs: int = 0) -> bytes:
    """An estimator (or pipeline) as serialized ONNX, input ``features`` float32 (n, n_features).

    ``n_outputs`` declares the width of a multi-output regressor's ``variable`` (skl2onnx assumes 1).
    """
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    options = {id(estimator): {"zipmap": False}} if classifier else None
    try:
        proto = convert_sklearn(
            estimator,
            initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
            options=options,
            name=type(estimator).__name__,  # skl2onnx's default is a random uuid: same model, different bytes
            final_types=[("variable", FloatTensorType([None, n_outputs]))] if n_outputs else None,
            target_opset={"": OPSET, "ai.onnx.ml": 3},
        )
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as exc:
        raise TrainingError(f"cannot export {type(estimator).__name__} to ONNX: {exc}") from None
    return bytes(proto.SerializeToString())


def quadratic_score_onnx(
    center: NDArray[np.float64], projection: NDArray[np.float64], name: str = "quadratic_score"
) -> bytes:
    """ONNX graph of ``||(x - center) @ projection||``: a (low-rank) Mahalanobis distance.

    skl2onnx has no converter for covariance estimators; this graph is three nodes and quantizes to int8.
    """
    inits = [
        numpy_helper.from_array(center.astype(np.float32)[None, :], "center"),
        numpy_helper.from_array(projection.astype(np.float32), "projection"),
    ]
    nodes = [
        helper.make_node("Sub", [INPUT_NAME, "center"], ["centered"], name="center"),
        helper.make_node("MatMul", ["centered", "projection"], ["projected"], name="project"),
        helper.make_node("ReduceL2", ["projected"], ["score"], axes=[1], keepdims=1, name="norm"),
    ]
    inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, center.shape[0]])]
    return checked_model(nodes, inits, inputs, [("score", [None, 1])], name)


def window_features_nodes(spec: FeatureSpec) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes computing ``features.features(window, spec)`` in float64, from input ``window`` to ``raw_features``.

    Built from the same ``FeatureSpec`` and the same constant matrices (``features.window_statistics``) as
    the numpy features, so an edge graph that takes the window computes the numbers training saw. Only
    the anomaly recipe (mean, std, slope, last value per signal) has a graph form.
    """
    if spec.task != "anomaly":
        raise TrainingError(f"no ONNX form of the {spec.task} window features")
    linear, centering = window_statistics(spec.window)
    p = FEATURE_NODES
    inits = [  # (k, length) @ (n, length, n_signals) → (n, k, n_signals): statistics in features.py order
        numpy_helper.from_array(np.ascontiguousarray(linear[:, :1].T), p + "mean_weights"),
        numpy_helper.from_array(np.ascontiguousarray(centering.T), p + "centering"),
        numpy_helper.from_array(np.ascontiguousarray(linear[:, 1:].T), p + "slope_last_weights"),
    ]
    nodes = [
        helper.make_node("MatMul", [p + "mean_weights", WINDOW_INPUT], [p + "mean"], name=p + "mean"),
        helper.make_node("MatMul", [p + "centering", WINDOW_INPUT], [p + "centered"], name=p + "centered"),
        helper.make_node("ReduceL2", [p + "centered"], [p + "std"], axes=[1], keepdims=1, name=p + "std"),
        helper.make_node("MatMul", [p + "slope_last_weights", WINDOW_INPUT], [p + "slope_last"], name=p + "slope"),
        helper.make_node("Concat", [p + "mean", p + "std", p + "slope_last"], [p + "stats"], axis=1, name=p + "cat"),
        helper.make_node("Flatten", [p + "stats"], ["raw_features"], axis=1, name=p + "flatten"),
    ]
    return nodes, inits


def _window_input(spec: FeatureSpec) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(WINDOW_INPUT, TensorProto.DOUBLE, [None, spec.window, len(spec.signals)])


def window_features_onnx(spec: FeatureSpec) -> bytes:
    """A graph from ``window`` to its float64 ``raw_features`` alone (for checking the graph form)."""
    nodes, inits = window_features_nodes(spec)
    return checked_model(nodes, inits, [_window_input(spec)], [("raw_features", [None, None])], "window_features", True)


def window_input_onnx(spec: FeatureSpec, core: bytes) -> bytes:
    """A ``features``-input graph behind the window feature nodes and the baseline standardisation.

    The edge then makes one onnxruntime call per window: raw readings in, score out. The baseline (mean and
    reciprocal spread of each feature, ``runtime.baseline_stats``) is an input, so one graph serves every
    asset's own baseline; the standardised features enter ``core`` as float32, as when it stood alone.
    """
    nodes, inits = window_features_nodes(spec)
    mean, inv_std = BASELINE_INPUTS
    p = FEATURE_NODES
    nodes += [
        helper.make_node("Sub", ["raw_features", mean], [p + "offset"], name=p + "offset"),
        helper.make_node("Mul", [p + "offset", inv_std], [p + "standardised"], name=p + "scale"),
        helper.make_node("Cast", [p + "standardised"], [INPUT_NAME], to=TensorProto.FLOAT, name=p + "cast"),
    ]
    width = feature_width(core)
    inputs = [_window_input(spec)] + [
        helper.make_tensor_value_info(name, TensorProto.DOUBLE, [width]) for name in BASELINE_INPUTS
    ]
    graph = onnx.load_from_string(core).graph
    if [i.name for i in graph.input] != [INPUT_NAME]:
        raise TrainingError(f"the core graph must take one input {INPUT_NAME!r}")
    outputs = [(o.name, [d.dim_value or None for d in o.type.tensor_type.shape.dim]) for o in graph.output]
    return checked_model(
        nodes + list(graph.node), inits + list(graph.initializer), inputs, outputs, f"window_{graph.name}"
    )


def feature_width(model_bytes: bytes) -> int:
    """The declared feature width of a ``features``-input graph."""
    graph = onnx.load_from_string(model_bytes).graph
    return int(graph.input[0].type.tensor_type.shape.dim[1].dim_value)


def checked_model(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[tuple[str, list[int | None]]],
    name: str,
    double_outputs: bool = False,
) -> bytes:
    """A checked opset-17 model of these nodes as bytes (float32 outputs unless ``double_outputs``)."""
    kind = TensorProto.DOUBLE if double_outputs else TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        name,
        inputs,
        [helper.make_tensor_value_info(out, kind, shape) for out, shape in outputs],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def quantize_int8(model_bytes: bytes, per_channel: bool = False) -> bytes:
    """Dynamic int8 quantization of the graph's MatMul/Gemm weights (onnxruntime.quantization).

    ``per_channel``: one scale per output column of a weight matrix instead of one per matrix (a whitening
    matrix's columns differ in range by orders of magnitude; one scale rounds the small ones away).

    Window feature nodes stay float64: their operand is the raw window, which int8 would round away. Weights
    use 7 of their 8 bits (``reduce_range``): on x86 CPUs without VNNI (AVX2 only, as many gateways are)
    onnxruntime multiplies uint8 activations by int8 weights with an instruction that saturates at int16 when
    two products add up, so full-range weights give different results on different CPUs (a tree graph reached
    wrong leaves on some of its inputs; docs/models.md). With 7-bit weights the same graph gives the same answer
    everywhere.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep = [n.name for n in onnx.load_from_string(model_bytes).graph.node if n.name.startswith(FEATURE_NODES)]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(model_bytes)
        try:
            quantize_dynamic(
                src,
                dst,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=keep,
                reduce_range=True,
                per_channel=per_channel,
            )
        except Exception as exc:  # onnxruntime raises bare Exceptions from its graph tools
            raise TrainingError(f"int8 quantization failed: {exc}") from None
        return dst.read_bytes()


def has_matmul(model_bytes: bytes) -> bool:
    """Whether the graph has weights int8 quantization can act on (tree ensembles have none)."""
    model = onnx.load_from_string(model_bytes)
    return any(node.op_type in {"MatMul", "Gemm"} for node in model.graph.node)


def knn_ensemble_onnx(
    center: NDArray[np.float64],
    whitening: NDArray[np.float64],
    reference: NDArray[np.float64],
    n_neighbors: int,
    weights: tuple[float, float],
) -> bytes:
    """ONNX graph of ``a * mahalanobis(x) + b * mean distance to the k nearest reference rows`` (whitened)."""
    f32 = np.float32
    inits = [
        numpy_helper.from_array(center.astype(f32)[None, :], "center"),
        numpy_helper.from_array(whitening.astype(f32), "whitening"),
        numpy_helper.from_array(reference.T.astype(f32), "reference_t"),
        numpy_helper.from_array((reference**2).sum(axis=1).astype(f32)[None, :], "reference_sq"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array([n_neighbors], dtype=np.int64), "k"),
        numpy_helper.from_array(np.array(-2.0, dtype=f32), "minus_two"),
        numpy_helper.from_array(np.array(weights[0], dtype=f32), "weight_maha"),
        numpy_helper.from_array(np.array(weights[1], dtype=f32), "weight_knn"),
    ]
    nodes = [
        helper.make_node("Sub", [INPUT_NAME, "center"], ["centered"]),
        helper.make_node("MatMul", ["centered", "whitening"], ["white"]),
        helper.make_node("Mul", ["white", "white"], ["white_sq"]),
        helper.make_node("ReduceSum", ["white_sq", "axes"], ["norm_sq"], keepdims=1),
        helper.make_node("Sqrt", ["norm_sq"], ["maha"]),
        helper.make_node("MatMul", ["white", "reference_t"], ["cross"]),
        helper.make_node("Mul", ["cross", "minus_two"], ["cross2"]),
        helper.make_node("Add", ["cross2", "norm_sq"], ["partial"]),
        helper.make_node("Add", ["partial", "reference_sq"], ["dist_sq_raw"]),
        helper.make_node("Relu", ["dist_sq_raw"], ["dist_sq"]),  # rounding can make tiny negatives
        helper.make_node("TopK", ["dist_sq", "k"], ["nearest_sq", "nearest_idx"], axis=1, largest=0),
        helper.make_node("Sqrt", ["nearest_sq"], ["nearest"]),
        helper.make_node("ReduceMean", ["nearest"], ["knn"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["maha", "weight_maha"], ["maha_w"]),
        helper.make_node("Mul", ["knn", "weight_knn"], ["knn_w"]),
        helper.make_node("Add", ["maha_w", "knn_w"], ["score"]),
    ]
    inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, center.shape[0]])]
    return checked_model(nodes, inits, inputs, [("score", [None, 1])], "knn_mahalanobis_ensemble")


def hist_boosting_onnx(estimator: Any, n_features: int) -> bytes:
    """A fitted ``HistGradientBoostingRegressor`` (numeric features, one target) as an ONNX-ML TreeEnsembleRegressor.

    skl2onnx's converter fails on scikit-learn 1.9's histogram trees, so the trees are written here: each node
    ``x[feature] <= threshold`` goes to its left child (a value the trees never saw missing at fit goes left
    too: the runtime refuses NaN anyway), leaf values already carry the learning rate, the baseline is the
    base value. The attributes onnxruntime defaults (hit rates, missing-value tracking) are left out: a third
    smaller file for the same function.
    """
    predictors = [tree for iteration in estimator._predictors for tree in iteration]
    if any(len(iteration) != 1 for iteration in estimator._predictors):
        raise TrainingError("only single-target histogram boosting is exported")
    ints: dict[str, list[int]] = {k: [] for k in ("treeids", "nodeids", "featureids", "truenodeids", "falsenodeids")}
    values: list[float] = []
    modes: list[str] = []
    leaves: dict[str, list[Any]] = {"treeids": [], "nodeids": [], "weights": []}
    for tree_id, tree in enumerate(predictors):
        nodes = tree.nodes
        if nodes["is_categorical"].any():
            raise TrainingError("categorical splits are not exported")
        for node_id, node in enumerate(nodes):
            leaf = bool(node["is_leaf"])
            ints["treeids"].append(tree_id)
            ints["nodeids"].append(node_id)
            ints["featureids"].append(0 if leaf else int(node["feature_idx"]))
            ints["truenodeids"].append(0 if leaf else int(node["left"]))
            ints["falsenodeids"].append(0 if leaf else int(node["right"]))
            values.append(0.0 if leaf else float(node["num_threshold"]))
            modes.append("LEAF" if leaf else "BRANCH_LEQ")
            if leaf:
                leaves["treeids"].append(tree_id)
                leaves["nodeids"].append(node_id)
                leaves["weights"].append(float(node["value"]))
    attributes: dict[str, Any] = {f"nodes_{k}": v for k, v in ints.items()}
    node = helper.make_node(
        "TreeEnsembleRegressor",
        [INPUT_NAME],
        ["variable"],
        domain="ai.onnx.ml",
        name="hist_boosting",
        n_targets=1,
        base_values=[float(np.ravel(estimator._baseline_prediction)[0])],
        post_transform="NONE",
        aggregate_function="SUM",
        nodes_modes=modes,
        nodes_values=_float32_exact(values),
        target_ids=[0] * len(leaves["nodeids"]),
        target_weights=leaves["weights"],
        target_treeids=leaves["treeids"],
        target_nodeids=leaves["nodeids"],
        **attributes,
    )
    graph = helper.make_graph(
        [node],
        "hist_boosting",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])],
    )
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", 3)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _float32_exact(thresholds: list[float]) -> list[float]:
    """Thresholds as the float32 ONNX compares with: the largest float32 not above each float64 threshold.

    The input is cast to float32; ``x32 <= t32`` then routes every float32 input as ``x <= t`` would in float64
    (rounding ``t`` to nearest could send a value just above ``t`` left).
    """
    t64 = np.asarray(thresholds, dtype=np.float64)
    t32 = t64.astype(np.float32)
    above = t32.astype(np.float64) > t64
    t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
    return [float(v) for v in t32]
