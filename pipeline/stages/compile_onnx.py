"""Compile a fitted candidate to ONNX (skl2onnx) and check it against scikit-learn on the holdout.

The scikit-learn pipeline stays the source of truth: the compiled graph is served only when it
gives the same labels and probabilities within ABS_TOLERANCE (values within REL_TOLERANCE for
regression) on every holdout row. Linear models take doubles, as scikit-learn computes them; tree
ensembles take floats, as scikit-learn's trees compare them.

skl2onnx has no converter for three things bitloop's pipelines hold, so they are written here
(each a few ONNX operators, and each checked by the parity check on every version):
- `MissingIndicator`: no converter upstream;
- `SimpleImputer` on doubles: ONNX Runtime's `Imputer` kernel takes floats only;
- `OneHotEncoder` with infrequent categories (`max_categories`): refused upstream.
And one upstream bug: the HistGradientBoosting converter mixes Python booleans into an integer
attribute, which protobuf 7 refuses; `_IntegerFlags` hands it integers.
"""

from __future__ import annotations

import logging
import time
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from core.compiled import Compilation, CompiledModel
from core.schema import MISSING_CATEGORY, DatasetSchema

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

log = logging.getLogger(__name__)

OPSETS = {"": 18, "ai.onnx.ml": 3}
ABS_TOLERANCE = 1e-5
"""Largest difference of a class probability between the compiled graph and scikit-learn."""
REL_TOLERANCE = 1e-6
"""Largest difference of a regression value, relative to the larger of its size and the holdout's spread."""


def _double_inputs(model: Pipeline) -> bool:
    """Linear models compute in doubles; scikit-learn's trees compare float32 values."""
    return hasattr(model[-1], "coef_")


def to_onnx(model: Pipeline, schema: DatasetSchema) -> bytes:
    """The fitted pipeline as an ONNX graph with one input per feature; raises when it cannot convert."""
    import copy

    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType

    _register_converters()
    numeric_type = DoubleTensorType if _double_inputs(model) else FloatTensorType
    inputs = [
        (f.name, numeric_type([None, 1]) if f.kind == "numeric" else StringTensorType([None, 1]))
        for f in schema.features
    ]
    # The graph's string inputs spell a missing category as MISSING_CATEGORY (ONNX strings have no
    # NaN), so a copy whose categorical imputers look for that value converts to the same function.
    graph_model = copy.deepcopy(model)
    for step in _steps(graph_model):
        if type(step).__name__ == "SimpleImputer" and step.fill_value == MISSING_CATEGORY:
            step.missing_values = MISSING_CATEGORY
    classifier = {id(graph_model[-1]): {"zipmap": False}} if schema.task == "classification" else None
    onx = convert_sklearn(graph_model, initial_types=inputs, target_opset=OPSETS, options=classifier)
    return bytes(onx.SerializeToString())


def _steps(estimator: Any) -> list[Any]:
    """The estimator and every estimator nested in its pipelines and column transformers."""
    found = [estimator]
    for _, child in getattr(estimator, "steps", []):
        found += _steps(child)
    for _, child, _ in getattr(estimator, "transformers_", []):
        found += _steps(child)
    return found


def parity(model: Pipeline, compiled: CompiledModel, frame: pd.DataFrame, task: str) -> dict[str, Any]:
    """The largest differences between the two runtimes on `frame`, and how many labels differ."""
    got = compiled.run_frame(frame)
    if task == "classification":
        expected = np.asarray(model.predict_proba(frame), dtype=np.float64)
        if got.shape != expected.shape:
            raise ValueError(f"the graph answers {got.shape} probabilities, scikit-learn {expected.shape}")
        diff = np.abs(got - expected)
        mismatches = int((got.argmax(axis=1) != expected.argmax(axis=1)).sum())
        return {"max_abs_diff": float(diff.max(initial=0.0)), "label_mismatches": mismatches}
    expected = np.asarray(model.predict(frame), dtype=np.float64).reshape(-1)
    scale = np.maximum(np.abs(expected), float(np.std(expected)) or 1.0)
    diff = np.abs(got - expected)
    return {
        "max_abs_diff": float(diff.max(initial=0.0)),
        "max_rel_diff": float((diff / scale).max(initial=0.0)),
        "label_mismatches": 0,
    }


def compile_candidate(
    model: Pipeline, schema: DatasetSchema, holdout: pd.DataFrame
) -> tuple[bytes | None, Compilation]:
    """The ONNX graph (None when it cannot be built) and its parity on the whole holdout."""
    started = time.perf_counter()
    frame = holdout[schema.feature_names]
    try:
        data = to_onnx(model, schema)
        figures = parity(model, CompiledModel(data, schema), frame, schema.task)
    except Exception as err:  # skl2onnx and ONNX Runtime raise many types; each means "no compiled runtime"
        log.warning("the candidate does not compile", extra={"error": f"{type(err).__name__}: {err}"[:300]})
        return None, Compilation(
            status="error", error=f"{type(err).__name__}: {err}", seconds=time.perf_counter() - started
        )
    close = (
        figures["max_abs_diff"] <= ABS_TOLERANCE
        if schema.task == "classification"
        else figures["max_rel_diff"] <= REL_TOLERANCE
    )
    status: Literal["passed", "failed"] = "passed" if close and figures["label_mismatches"] == 0 else "failed"
    if status == "failed":  # said where `make repro` shows it: this version serves with scikit-learn
        log.warning(
            "the compiled graph differs from the model on the holdout: served with scikit-learn",
            extra=figures,
        )
    return data, Compilation(status=status, rows=len(frame), seconds=time.perf_counter() - started, **figures)


def _node(scope: Any, container: Any, op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> None:
    container.add_node(op, inputs, outputs, name=scope.get_unique_operator_name(op), **attrs)


class _IntegerFlags:
    """A converter container that turns booleans in list attributes into the integers ONNX expects."""

    def __init__(self, container: Any) -> None:
        self._container = container

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)

    def add_node(self, *args: Any, **attrs: Any) -> Any:
        for key, value in attrs.items():
            if isinstance(value, list) and any(isinstance(v, bool) for v in value):
                attrs[key] = [int(v) for v in value]
        return self._container.add_node(*args, **attrs)


def _missing_indicator_shape(operator: Any) -> None:
    from skl2onnx.common.data_types import FloatTensorType

    operator.outputs[0].type = FloatTensorType([None, len(operator.raw_operator.features_)])


def _missing_indicator(scope: Any, operator: Any, container: Any) -> None:
    """1.0 where a column the indicator watches is NaN: Gather, IsNaN, Cast."""
    from onnx import TensorProto

    columns = [int(i) for i in operator.raw_operator.features_]
    indices = scope.get_unique_variable_name("indicator_columns")
    container.add_initializer(indices, TensorProto.INT64, [len(columns)], columns)
    watched, missing = scope.get_unique_variable_name("watched"), scope.get_unique_variable_name("missing")
    _node(scope, container, "Gather", [operator.inputs[0].full_name, indices], [watched], axis=1)
    _node(scope, container, "IsNaN", [watched], [missing])
    _node(scope, container, "Cast", [missing], [operator.outputs[0].full_name], to=TensorProto.FLOAT)


def _imputer(scope: Any, operator: Any, container: Any) -> None:
    """Doubles: Where(IsNaN(x), statistics, x), since ONNX Runtime's Imputer takes floats only."""
    from onnx import TensorProto
    from skl2onnx.common.data_types import DoubleTensorType
    from skl2onnx.operator_converters.imputer_op import convert_sklearn_imputer

    if not isinstance(operator.inputs[0].type, DoubleTensorType):
        convert_sklearn_imputer(scope, operator, container)
        return
    statistics = operator.raw_operator.statistics_.astype(np.float64)
    fill, missing = scope.get_unique_variable_name("statistics"), scope.get_unique_variable_name("missing")
    container.add_initializer(fill, TensorProto.DOUBLE, [len(statistics)], statistics.tolist())
    _node(scope, container, "IsNaN", [operator.inputs[0].full_name], [missing])
    x, out = operator.inputs[0].full_name, operator.outputs[0].full_name
    _node(scope, container, "Where", [missing, fill, x], [out])


def _one_hot_columns(encoder: Any) -> list[tuple[list[str], list[int], int, int]]:
    """Per input column: its categories, the output column of each, the column of unknown values
    (-1: none) and the number of output columns, following scikit-learn's infrequent pooling."""
    if encoder.drop_idx_ is not None:
        raise ValueError("OneHotEncoder(drop=...) has no converter here: scikit-learn serves the version")
    infrequent = getattr(encoder, "infrequent_categories_", None) or [None] * len(encoder.categories_)
    layout = []
    for categories, pooled in zip(encoder.categories_, infrequent, strict=True):
        pooled_set = set() if pooled is None else {str(c) for c in pooled}
        frequent = [str(c) for c in categories if str(c) not in pooled_set]
        width = len(frequent) + bool(pooled_set)
        pooled_column = len(frequent) if pooled_set else -1
        names = [str(c) for c in categories]
        columns = [pooled_column if n in pooled_set else frequent.index(n) for n in names]
        unknown = pooled_column if encoder.handle_unknown == "infrequent_if_exist" else -1
        layout.append((names, columns, unknown, width))
    return layout


def _one_hot_shape(operator: Any) -> None:
    from skl2onnx.common.data_types import FloatTensorType

    width = sum(w for *_, w in _one_hot_columns(operator.raw_operator))
    operator.outputs[0].type = FloatTensorType([None, width])


def _one_hot(scope: Any, operator: Any, container: Any) -> None:
    """Per column: LabelEncoder (category -> output column), Equal against 0..width-1, Cast; Concat."""
    from onnx import TensorProto

    parts = []
    for index, (names, columns, unknown, width) in enumerate(_one_hot_columns(operator.raw_operator)):
        name = scope.get_unique_variable_name
        position, column, code, hot, part = (name(f"one_hot_{k}") for k in range(5))
        container.add_initializer(position, TensorProto.INT64, [1], [index])
        _node(scope, container, "Gather", [operator.inputs[0].full_name, position], [column], axis=1)
        _node(
            scope,
            container,
            "LabelEncoder",
            [column],
            [code],
            op_domain="ai.onnx.ml",
            op_version=2,
            keys_strings=names,
            values_int64s=columns,
            default_int64=unknown,
        )
        span = name("one_hot_span")
        container.add_initializer(span, TensorProto.INT64, [width], list(range(width)))
        _node(scope, container, "Equal", [code, span], [hot])
        _node(scope, container, "Cast", [hot], [part], to=TensorProto.FLOAT)
        parts.append(part)
    _node(scope, container, "Concat", parts, [operator.outputs[0].full_name], axis=1)


@cache
def _register_converters() -> None:
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import calculate_linear_regressor_output_shapes
    from skl2onnx.operator_converters.random_forest import (
        convert_sklearn_random_forest_classifier,
        convert_sklearn_random_forest_regressor_converter,
    )
    from skl2onnx.shape_calculators.ensemble_shapes import calculate_linear_classifier_output_shapes
    from skl2onnx.shape_calculators.imputer import calculate_sklearn_imputer_output_shapes
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.impute import MissingIndicator, SimpleImputer
    from sklearn.preprocessing import OneHotEncoder

    def classifier(scope: Any, operator: Any, container: Any) -> None:
        convert_sklearn_random_forest_classifier(scope, operator, _IntegerFlags(container))

    def regressor(scope: Any, operator: Any, container: Any) -> None:
        convert_sklearn_random_forest_regressor_converter(scope, operator, _IntegerFlags(container))

    register = update_registered_converter
    register(MissingIndicator, "BitloopMissingIndicator", _missing_indicator_shape, _missing_indicator)
    register(
        SimpleImputer,
        "SklearnSimpleImputer",
        calculate_sklearn_imputer_output_shapes,
        _imputer,
        overwrite=True,
    )
    register(OneHotEncoder, "SklearnOneHotEncoder", _one_hot_shape, _one_hot, overwrite=True)
    classifier_options = {
        "zipmap": [True, False, "columns"],
        "raw_scores": [True, False],
        "output_class_labels": [False, True],
        "nocl": [True, False],
    }
    register(
        HistGradientBoostingClassifier,
        "SklearnHistGradientBoostingClassifier",
        calculate_linear_classifier_output_shapes,
        classifier,
        options=classifier_options,
        overwrite=True,
    )
    register(
        HistGradientBoostingRegressor,
        "SklearnHistGradientBoostingRegressor",
        calculate_linear_regressor_output_shapes,
        regressor,
        options={"raw_scores": [True, False]},
        overwrite=True,
    )
