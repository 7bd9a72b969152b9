"""Tree ensembles compiled to matrix form, so onnxruntime's int8 quantization can act on them.

An ONNX-ML TreeEnsembleRegressor has no weights a quantizer can touch. The same function written with
standard ops (the GEMM strategy of Hummingbird) has: every internal node's comparison is gathered and
evaluated at once, a path matrix picks the leaf each tree reaches, and a leaf-value matrix sums them. The
comparisons stay float32 against the exported thresholds, so the leaves reached are exactly the tree's; the
path matrix (entries -1, 0, +1) quantizes exactly; the leaf values are scaled per tree before quantization so
each tree keeps its own int8 resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from models.errors import TrainingError
from models.export import INPUT_NAME, checked_model

TREE_DOMAIN = "ai.onnx.ml"
_TREE_MODES = {"BRANCH_LEQ", "LEAF"}


@dataclass
class _Tree:
    """One tree's internal nodes (feature, threshold) and leaves, each leaf with its root-to-leaf path."""

    features: list[int] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)
    leaf_ids: list[int] = field(default_factory=list)
    paths: list[list[tuple[int, int]]] = field(default_factory=list)  # per leaf: (internal index, +1 true / -1 false)


def trees_to_matrix_onnx(model_bytes: bytes) -> bytes:
    """A single-``TreeEnsembleRegressor`` graph compiled to matrices (Hummingbird's GEMM strategy), opset 17.

    The tree ensemble has no MatMul, so int8 quantization cannot act on it; the compiled graph computes the
    same function with standard ops and puts both the path matrix and the leaf values through a MatMul:

    1. ``decision[n, t, i] = x[n, feature(t, i)] <= threshold(t, i)`` (float32, as the ensemble compares),
       0/1, for every internal node ``i`` of every tree ``t`` (unused slots padded, their path rows zero);
    2. ``decision @ paths`` with ``paths[t, i, l]`` +1 when leaf ``l`` lies under node ``i``'s true branch,
       -1 under its false branch: the sum reaches ``need[t, l]``, the leaf's count of true branches, for
       the reached leaf only (any other leaf falls short by at least 1, padded leaves need -1), so
       ``|sum - need| < 0.5`` picks it even from dequantized int8 sums;
    3. per tree, the one-hot leaves ``@`` its leaf values divided by the tree's largest (so int8 keeps each
       tree's own resolution), times that largest, summed over the trees, plus the base value.

    Only BRANCH_LEQ/LEAF nodes, one target, SUM aggregation and no post transform are compiled; anything
    else raises TrainingError. The input and output keep their names and shapes.
    """
    graph = onnx.load_from_string(model_bytes).graph
    attrs = _tree_ensemble_attributes(graph)
    trees, values = _read_trees(attrs)
    base = _float_list(attrs, "base_values")
    if len(base) > 1:
        raise TrainingError(f"a single-target tree ensemble has one base value, not {len(base)}")
    width = graph.input[0].type.tensor_type.shape.dim[1].dim_value
    bad = {f for tree in trees for f in tree.features if f < 0 or (width and f >= width)}
    if bad:
        raise TrainingError(f"tree ensemble splits on features {sorted(bad)} outside the input width {width}")
    shape = [d.dim_value or None for d in graph.output[0].type.tensor_type.shape.dim]
    nodes, inits = _matrix_nodes(trees, values, float(base[0]) if base else 0.0, INPUT_NAME, graph.output[0].name)
    return checked_model(nodes, inits, [graph.input[0]], [(graph.output[0].name, shape)], f"{graph.name}_matrix")


def _tree_ensemble_attributes(graph: onnx.GraphProto) -> dict[str, Any]:
    """The attributes of the graph's one node, refused unless it is a plain single-target SUM regressor."""
    ops = [f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in graph.node]
    if ops != [f"{TREE_DOMAIN}:TreeEnsembleRegressor"]:
        raise TrainingError(f"expected a graph of a single {TREE_DOMAIN} TreeEnsembleRegressor, got {ops}")
    (node,) = graph.node
    if [i.name for i in graph.input] != [INPUT_NAME] or list(node.input) != [INPUT_NAME]:
        raise TrainingError(f"the tree ensemble must read the one graph input {INPUT_NAME!r}")
    tensor_type = graph.input[0].type.tensor_type
    if tensor_type.elem_type != TensorProto.FLOAT or len(tensor_type.shape.dim) != 2:
        raise TrainingError("the tree ensemble's input must be float32 (n, n_features)")
    if [o.name for o in graph.output] != list(node.output):
        raise TrainingError("the tree ensemble's output must be the graph output")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    for name, wanted in (("aggregate_function", "SUM"), ("post_transform", "NONE")):
        value = _text(attrs.get(name, wanted.encode()))
        if value != wanted:
            raise TrainingError(f"tree ensemble {name} {value}: only {wanted} is compiled")
    if attrs.get("n_targets", 1) != 1 or any(attrs.get("target_ids", [])):
        raise TrainingError("only a single-target tree ensemble is compiled")
    if any(attrs.get("nodes_missing_value_tracks_true", [])):
        raise TrainingError("tree ensemble routes missing values to the true branch: not compiled")
    modes = {_text(m) for m in attrs.get("nodes_modes", [])}
    if not modes <= _TREE_MODES:
        raise TrainingError(f"tree ensemble node modes {sorted(modes - _TREE_MODES)}: only {sorted(_TREE_MODES)}")
    return attrs


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _float_list(attrs: dict[str, Any], name: str) -> NDArray[np.float32]:
    """A float attribute, or its ``_as_tensor`` form when float32 (double thresholds compare differently)."""
    tensor = attrs.get(f"{name}_as_tensor")
    if tensor is None:
        return np.asarray(attrs.get(name, []), dtype=np.float32)
    if tensor.data_type != TensorProto.FLOAT:
        raise TrainingError(f"tree ensemble {name}_as_tensor is not float32: not compiled")
    return numpy_helper.to_array(tensor).astype(np.float32).ravel()


def _read_trees(attrs: dict[str, Any]) -> tuple[list[_Tree], list[list[float]]]:
    """Each tree (in tree id order) with its paths, and the summed target weight of each of its leaves."""
    tree_ids, node_ids = attrs.get("nodes_treeids", []), attrs.get("nodes_nodeids", [])
    thresholds = _float_list(attrs, "nodes_values")
    columns = [
        attrs.get(name, []) for name in ("nodes_featureids", "nodes_modes", "nodes_truenodeids", "nodes_falsenodeids")
    ]
    if not tree_ids or any(len(c) != len(tree_ids) for c in [node_ids, thresholds, *columns]):
        raise TrainingError("tree ensemble node attributes are missing or of different lengths")
    table: dict[int, dict[int, tuple[str, int, float, int, int]]] = {}
    for t, n, value, feature, mode, true, false in zip(tree_ids, node_ids, thresholds, *columns, strict=True):
        if n in table.setdefault(t, {}):
            raise TrainingError(f"tree {t} has node {n} twice")
        table[t][n] = (_text(mode), int(feature), float(value), int(true), int(false))
    trees = {t: _walk(t, table[t]) for t in sorted(table)}
    weights = {t: dict.fromkeys(tree.leaf_ids, 0.0) for t, tree in trees.items()}
    targets = [attrs.get("target_treeids", []), attrs.get("target_nodeids", []), _float_list(attrs, "target_weights")]
    if len({len(c) for c in targets}) != 1:
        raise TrainingError("tree ensemble target attributes are of different lengths")
    for t, n, weight in zip(*targets, strict=True):
        if n not in weights.get(t, {}):
            raise TrainingError(f"tree ensemble target ({t}, {n}) is not a reachable leaf")
        weights[t][n] += float(weight)
    return list(trees.values()), [[weights[t][n] for n in tree.leaf_ids] for t, tree in trees.items()]


def _walk(tree_id: int, nodes: dict[int, tuple[str, int, float, int, int]]) -> _Tree:
    """One tree from its root: internal nodes and leaves in depth-first order, with each leaf's path."""
    children = {c for mode, _, _, true, false in nodes.values() if mode != "LEAF" for c in (true, false)}
    roots = sorted(set(nodes) - children)
    if len(roots) != 1:
        raise TrainingError(f"tree {tree_id} has roots {roots}, not one")
    tree = _Tree()
    stack: list[tuple[int, list[tuple[int, int]]]] = [(roots[0], [])]
    seen: set[int] = set()
    while stack:
        node_id, path = stack.pop()
        if node_id in seen or node_id not in nodes:
            raise TrainingError(f"tree {tree_id} is not a tree: node {node_id} missing or reached twice")
        seen.add(node_id)
        mode, feature, value, true, false = nodes[node_id]
        if mode == "LEAF":
            tree.leaf_ids.append(node_id)
            tree.paths.append(path)
            continue
        index = len(tree.features)
        tree.features.append(feature)
        tree.thresholds.append(value)
        stack += [(false, [*path, (index, -1)]), (true, [*path, (index, 1)])]
    return tree


def _matrix_nodes(
    trees: list[_Tree], values: list[list[float]], base: float, source: str, target: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The GEMM-strategy nodes from ``source`` (n, n_features) to ``target`` (n, 1); see trees_to_matrix_onnx."""
    n_trees = len(trees)
    n_internal = max(1, *(len(t.features) for t in trees))
    n_leaves = max(len(t.leaf_ids) for t in trees)
    features = np.zeros((n_trees, n_internal), dtype=np.int32)  # Gather indices: half the bytes of int64
    thresholds = np.zeros((n_trees, n_internal), dtype=np.float32)
    paths = np.zeros((n_trees, n_internal, n_leaves), dtype=np.float32)
    need = np.full((n_trees, 1, n_leaves), -1.0, dtype=np.float32)  # a padded leaf's sum is 0: never selected
    leaf_values = np.zeros((n_trees, n_leaves), dtype=np.float32)
    for t, (tree, weights) in enumerate(zip(trees, values, strict=True)):
        features[t, : len(tree.features)] = tree.features
        thresholds[t, : len(tree.thresholds)] = tree.thresholds
        leaf_values[t, : len(weights)] = weights
        for leaf, path in enumerate(tree.paths):
            for index, sign in path:
                paths[t, index, leaf] = sign
            need[t, 0, leaf] = sum(sign > 0 for _, sign in path)
    # Each tree's leaves as a share of its largest: int8 then rounds every tree at its own resolution (the
    # first boosted trees' leaves are tens of times the last ones'), and the float scale restores them.
    tree_scale = np.abs(leaf_values).max(axis=1)
    tree_scale[tree_scale == 0] = 1.0
    unit_values = (leaf_values / tree_scale[:, None]).astype(np.float32)
    p = "trees/"
    inits = [
        numpy_helper.from_array(features.ravel(), p + "split_features"),
        numpy_helper.from_array(thresholds.ravel(), p + "thresholds"),
        numpy_helper.from_array(np.array([-1, n_trees, 1, n_internal], dtype=np.int64), p + "decision_shape"),
        numpy_helper.from_array(paths, p + "paths"),
        numpy_helper.from_array(need, p + "need"),
        numpy_helper.from_array(np.array(0.5, dtype=np.float32), p + "half"),
        numpy_helper.from_array(unit_values[:, :, None], p + "leaf_values"),  # (T, L, 1), each tree within ±1
        numpy_helper.from_array(tree_scale.reshape(n_trees, 1, 1), p + "tree_scale"),
        numpy_helper.from_array(np.array([-1, n_trees], dtype=np.int64), p + "trees_shape"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), p + "tree_axis"),
        numpy_helper.from_array(np.array([base], dtype=np.float32), p + "base"),
    ]
    nodes = [
        helper.make_node("Gather", [source, p + "split_features"], [p + "split_x"], axis=1, name=p + "gather"),
        helper.make_node("LessOrEqual", [p + "split_x", p + "thresholds"], [p + "goes_true"], name=p + "compare"),
        helper.make_node("Cast", [p + "goes_true"], [p + "decision_flat"], to=TensorProto.FLOAT, name=p + "cast"),
        helper.make_node("Reshape", [p + "decision_flat", p + "decision_shape"], [p + "decision"], name=p + "per_tree"),
        helper.make_node("MatMul", [p + "decision", p + "paths"], [p + "path_sum"], name=p + "paths"),  # (n,T,1,L)
        helper.make_node("Sub", [p + "path_sum", p + "need"], [p + "miss"], name=p + "miss"),
        helper.make_node("Abs", [p + "miss"], [p + "abs_miss"], name=p + "abs_miss"),
        helper.make_node("Less", [p + "abs_miss", p + "half"], [p + "reached"], name=p + "reached"),
        helper.make_node("Cast", [p + "reached"], [p + "leaves"], to=TensorProto.FLOAT, name=p + "leaves"),
        helper.make_node("MatMul", [p + "leaves", p + "leaf_values"], [p + "unit_out"], name=p + "leaf_values"),
        helper.make_node("Mul", [p + "unit_out", p + "tree_scale"], [p + "tree_out"], name=p + "tree_scale"),
        helper.make_node("Reshape", [p + "tree_out", p + "trees_shape"], [p + "per_tree"], name=p + "per_tree_out"),
        helper.make_node("ReduceSum", [p + "per_tree", p + "tree_axis"], [p + "tree_sum"], name=p + "sum", keepdims=1),
        helper.make_node("Add", [p + "tree_sum", p + "base"], [target], name=p + "base"),
    ]
    return nodes, inits
