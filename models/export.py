"""ONNX export (skl2onnx, or a hand-built graph where no converter exists) and int8 quantization.

Training side only. Every exported graph takes one float32 input ``features`` of shape (n, n_features)
and the manifest names the output the runtime reads.
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

INPUT_NAME = "features"
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
    """ONNX graph of ``sqrt(sum(((x - center) @ projection) ** 2))``: a (low-rank) Mahalanobis distance.

    skl2onnx has no converter for covariance estimators; this graph is four nodes and quantizes to int8.
    """
    inits = [
        numpy_helper.from_array(center.astype(np.float32)[None, :], "center"),
        numpy_helper.from_array(projection.astype(np.float32), "projection"),
    ]
    nodes = [
        helper.make_node("Sub", [INPUT_NAME, "center"], ["centered"]),
        helper.make_node("MatMul", ["centered", "projection"], ["projected"]),
        helper.make_node("Mul", ["projected", "projected"], ["squared"]),
        helper.make_node("ReduceSum", ["squared", "axes"], ["sum"], keepdims=1),
        helper.make_node("Sqrt", ["sum"], ["score"]),
    ]
    inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, center.shape[0]])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def quantize_int8(model_bytes: bytes) -> bytes:
    """Dynamic int8 quantization of the graph's MatMul/Gemm weights (onnxruntime.quantization)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(model_bytes)
        try:
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
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
    graph = helper.make_graph(
        nodes,
        "knn_mahalanobis_ensemble",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, center.shape[0]])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())
