"""Tree models to ONNX graphs, for the serving fast path.

scikit-learn forests are written as one ``ai.onnx.ml`` ``TreeEnsemble`` node (opset 5) in double
precision, built from the fitted trees directly. The graph repeats what scikit-learn does, step
for step: cast the input to float32 (its trees compare float32 features with float64
thresholds), walk every tree, add the leaf values in tree order, divide by the number of trees.
The result is bit-for-bit the native prediction; skl2onnx's ``TreeEnsembleRegressor`` would give
float32 leaves and a float32 output. A forest classifier is the same graph with one target per
class (``TreeEnsemble`` gives a leaf one target, so each tree is written once per class with that
class's leaf shares): its output is ``predict_proba``, bit for bit, and its labels follow.

XGBoost and LightGBM models go through onnxmltools (float32, as both compute), so they agree
with the native model to float32 rounding, not bit for bit. Their classifiers' graphs output
``label`` and ``probabilities`` (rows, classes; no ZipMap), the latter ``predict_proba``.

Pure: imports neither Prefect nor MLflow; ``onnx`` and ``onnxmltools`` are imported on use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# Opsets: TreeEnsemble is ai.onnx.ml 5; onnxmltools' XGBoost and LightGBM converters support up
# to 15.
ONNX_OPSET, ONNX_ML_OPSET, CONVERTER_OPSET = 21, 5, 15
INPUT_NAME = "X"


class ConversionError(Exception):
    """The model has no ONNX form here (family, output shape or converter limits)."""


def to_onnx(model: Any, n_features: int) -> bytes:
    """The serialized ONNX graph of ``model``: input ``X`` (rows x n_features), output (rows, 1),
    or a classifier's probabilities (rows, classes)."""
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.tree import DecisionTreeRegressor, ExtraTreeRegressor

    if isinstance(model, RandomForestClassifier | ExtraTreesClassifier):
        trees = [estimator.tree_ for estimator in model.estimators_]
        return forest_to_onnx(trees, n_features, float(len(trees)), len(model.classes_))
    module = type(model).__module__
    if module.startswith("xgboost"):
        return xgboost_to_onnx(model, n_features)
    if module.startswith("lightgbm"):
        return lightgbm_to_onnx(model, n_features)
    if hasattr(model, "predict_proba"):
        raise ConversionError(f"no ONNX converter for {type(model).__name__}")
    if isinstance(model, RandomForestRegressor | ExtraTreesRegressor):
        trees = [estimator.tree_ for estimator in model.estimators_]
        return forest_to_onnx(trees, n_features, divisor=float(len(trees)))
    if isinstance(model, DecisionTreeRegressor | ExtraTreeRegressor):
        return forest_to_onnx([model.tree_], n_features, divisor=1.0)
    raise ConversionError(f"no ONNX converter for {type(model).__name__}")


def forest_to_onnx(
    trees: Sequence[Any], n_features: int, divisor: float, n_classes: int = 0
) -> bytes:
    """Average of scikit-learn ``Tree`` objects as a double-precision ONNX graph: regression
    trees (``n_classes`` 0), or classification trees' class shares, one output per class."""
    from onnx import TensorProto, checker, helper, numpy_helper

    nodes = _Nodes()
    targets = max(n_classes, 1)
    for tree in trees:
        if tree.n_outputs != 1 or tree.value.shape[2] != targets:
            raise ConversionError("only single-output trees are converted")
        for target in range(targets):
            nodes.add_tree(tree, target)
    n_nodes = len(nodes.features)
    ensemble = helper.make_node(
        "TreeEnsemble",
        ["X_float32_as_double"],
        ["sum"],
        domain="ai.onnx.ml",
        n_targets=targets,
        aggregate_function=1,  # SUM; the division below mirrors scikit-learn's `y /= n_trees`
        post_transform=0,
        tree_roots=nodes.roots,
        nodes_modes=helper.make_tensor(
            "nodes_modes",
            TensorProto.UINT8,
            (n_nodes,),
            np.zeros(n_nodes, np.uint8),  # x <= t
        ),
        nodes_featureids=nodes.features,
        nodes_splits=helper.make_tensor(
            "nodes_splits", TensorProto.DOUBLE, (n_nodes,), np.asarray(nodes.splits)
        ),
        nodes_truenodeids=nodes.true_ids,
        nodes_trueleafs=nodes.true_is_leaf,
        nodes_falsenodeids=nodes.false_ids,
        nodes_falseleafs=nodes.false_is_leaf,
        # a missing value (NaN) goes where scikit-learn's tree sends it (missing_go_to_left;
        # a feature with none in training: to the child that had the most samples)
        nodes_missing_value_tracks_true=nodes.missing_true,
        leaf_targetids=nodes.leaf_targets,
        leaf_weights=helper.make_tensor(
            "leaf_weights",
            TensorProto.DOUBLE,
            (len(nodes.leaf_weights),),
            np.asarray(nodes.leaf_weights),
        ),
    )
    graph = helper.make_graph(
        [
            helper.make_node("Cast", [INPUT_NAME], ["X_float32"], to=TensorProto.FLOAT),
            helper.make_node("Cast", ["X_float32"], ["X_float32_as_double"], to=TensorProto.DOUBLE),
            ensemble,
            helper.make_node("Div", ["sum", "n_trees"], ["prediction"]),
        ],
        "forest",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.DOUBLE, [None, n_features])],
        [helper.make_tensor_value_info("prediction", TensorProto.DOUBLE, [None, targets])],
        initializer=[numpy_helper.from_array(np.array([divisor], np.float64), "n_trees")],
    )
    model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", ONNX_OPSET),
            helper.make_opsetid("ai.onnx.ml", ONNX_ML_OPSET),
        ],
        ir_version=10,
        producer_name="mlpipe",
    )
    checker.check_model(model)
    return bytes(model.SerializeToString())


class _Nodes:
    """TreeEnsemble's layout: interior nodes and leaves in two global arrays, trees by root."""

    def __init__(self) -> None:
        self.roots: list[int] = []
        self.features: list[int] = []
        self.splits: list[float] = []
        self.true_ids: list[int] = []
        self.true_is_leaf: list[int] = []
        self.false_ids: list[int] = []
        self.false_is_leaf: list[int] = []
        self.leaf_weights: list[float] = []
        self.leaf_targets: list[int] = []
        self.missing_true: list[int] = []

    def add_tree(self, tree: Any, target: int = 0) -> None:
        """The tree, its leaves adding to ``target`` (their value for that class)."""
        left, right = tree.children_left, tree.children_right
        is_leaf = left == -1
        # global index of each sklearn node among this ensemble's interior nodes / leaves
        node_index = np.cumsum(~is_leaf) - 1 + len(self.features)
        leaf_index = np.cumsum(is_leaf) - 1 + len(self.leaf_weights)
        if is_leaf[0]:
            # A one-leaf tree: TreeEnsemble needs an interior root, so both branches of a
            # dummy split lead to that leaf.
            self.roots.append(len(self.features))
            self._add_split(0, 0.0, (int(leaf_index[0]), 1), (int(leaf_index[0]), 1), 1)
        else:
            self.roots.append(int(node_index[0]))
            for i in np.flatnonzero(~is_leaf):
                true_child, false_child = left[i], right[i]
                self._add_split(
                    int(tree.feature[i]),
                    float(tree.threshold[i]),
                    _child(true_child, is_leaf, node_index, leaf_index),
                    _child(false_child, is_leaf, node_index, leaf_index),
                    int(tree.missing_go_to_left[i]),  # the true branch is the left child
                )
        leaves = tree.value[is_leaf, 0, target]
        self.leaf_weights.extend(float(v) for v in leaves)
        self.leaf_targets.extend([target] * len(leaves))

    def _add_split(
        self,
        feature: int,
        split: float,
        true: tuple[int, int],
        false: tuple[int, int],
        missing_true: int,
    ) -> None:
        self.missing_true.append(missing_true)
        self.features.append(feature)
        self.splits.append(split)
        self.true_ids.append(true[0])
        self.true_is_leaf.append(true[1])
        self.false_ids.append(false[0])
        self.false_is_leaf.append(false[1])


def _child(
    child: int, is_leaf: np.ndarray, node_index: np.ndarray, leaf_index: np.ndarray
) -> tuple[int, int]:
    if is_leaf[child]:
        return int(leaf_index[child]), 1
    return int(node_index[child]), 0


def xgboost_to_onnx(model: Any, n_features: int) -> bytes:
    """An XGBoost regressor, classifier or Booster as a float32 ONNX graph, via onnxmltools."""
    import copy

    from onnxmltools import convert_xgboost

    booster = model.get_booster() if hasattr(model, "get_booster") else model
    # onnxmltools reads features as f0, f1, ...; a booster fitted on a DataFrame carries the
    # column names instead, so convert a copy without them (the order is the same).
    booster = booster.copy()
    booster.feature_names = None
    booster.feature_types = None
    if hasattr(model, "predict_proba"):  # a classifier needs its wrapper: classes, objective
        model = copy.copy(model)
        model._Booster = booster
    else:
        model = booster
    return _converted(convert_xgboost, model, n_features)


def lightgbm_to_onnx(model: Any, n_features: int) -> bytes:
    """A LightGBM regressor or classifier as a float32 ONNX graph, via onnxmltools."""
    from onnxmltools import convert_lightgbm

    if hasattr(model, "predict_proba"):
        return _converted(convert_lightgbm, model, n_features, zipmap=False)
    return _converted(convert_lightgbm, model, n_features)


def _converted(convert: Any, model: Any, n_features: int, **options: Any) -> bytes:
    from onnxmltools.convert.common.data_types import FloatTensorType

    try:
        graph = convert(
            model,
            initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
            target_opset=CONVERTER_OPSET,
            **options,
        )
    except (RuntimeError, ValueError, NotImplementedError, AttributeError) as exc:
        raise ConversionError(f"onnxmltools cannot convert this model: {exc}") from exc
    for output in graph.graph.output:  # any number of rows (one converter writes a fixed 1)
        dims = output.type.tensor_type.shape.dim
        if dims:
            dims[0].dim_param = "N"
    return bytes(graph.SerializeToString())
