"""The metrics of a model on a holdout, and the rules that compare them.

One home for what evaluate, register and promote all judge by: the same function scores a
candidate and the champion, so a promotion compares like with like.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from core.calibration import calibration_error
from core.params import HIGHER_IS_BETTER
from core.schema import DatasetSchema


def score(model: Pipeline, frame: pd.DataFrame, schema: DatasetSchema) -> dict[str, float]:
    """The task's metrics of `model` on `frame` (the same function scores champion and candidate)."""
    x, y = frame[schema.feature_names], frame[schema.target]
    with threadpool_limits(limits=1):
        predicted = model.predict(x)
        if schema.task == "regression":
            return task_metrics("regression", y, predicted)
        proba = model.predict_proba(x)
    return task_metrics("classification", y, predicted, proba, list(model.classes_))


def task_metrics(
    task: str,
    y: Sequence[Any] | np.ndarray | pd.Series,
    predicted: Sequence[Any] | np.ndarray,
    proba: np.ndarray | None = None,
    classes: list[Any] | None = None,
    only: str | None = None,
) -> dict[str, float]:
    """The task's metrics of predictions against true values: a holdout's (`score`) or live
    outcomes' (`core.quality`). Classification needs the probabilities, one column per class.
    `only` computes that one metric (a bootstrap draws it hundreds of times)."""
    if task == "regression":
        regression: dict[str, Callable[[], float]] = {
            "rmse": lambda: float(np.sqrt(skm.mean_squared_error(y, predicted))),
            "mae": lambda: float(skm.mean_absolute_error(y, predicted)),
            "r2": lambda: float(skm.r2_score(y, predicted)) if len(y) > 1 else float("nan"),
        }
        return {k: f() for k, f in regression.items() if only in (None, k)}
    if proba is None or classes is None:
        raise ValueError("classification metrics need the probabilities and the classes")
    binary = len(classes) == 2
    given = proba

    def roc_auc() -> float:
        if len(set(np.asarray(y).tolist())) < 2:
            return float("nan")
        if binary:
            return float(skm.roc_auc_score(y, given[:, 1]))
        return float(skm.roc_auc_score(y, given, multi_class="ovr", average="macro", labels=classes))

    classification: dict[str, Callable[[], float]] = {
        "accuracy": lambda: float(skm.accuracy_score(y, predicted)),
        "f1": lambda: float(
            skm.f1_score(
                y,
                predicted,
                average="binary" if binary else "macro",
                pos_label=classes[-1] if binary else 1,
                zero_division=0.0,
            )
        ),
        "log_loss": lambda: float(skm.log_loss(y, given, labels=classes)),
        "roc_auc": roc_auc,
        "brier": lambda: float(skm.brier_score_loss(y, given, labels=classes)),
        "ece": lambda: calibration_error(y, predicted, _confidence(predicted, given, classes)),
    }
    return {k: f() for k, f in classification.items() if only in (None, k)}


def _confidence(predicted: Sequence[Any] | np.ndarray, proba: np.ndarray, classes: list[Any]) -> np.ndarray:
    """Each row's probability of the class it was predicted as."""
    index = {str(c): i for i, c in enumerate(classes)}
    return np.asarray(proba[np.arange(len(proba)), [index[str(p)] for p in predicted]], dtype=float)


def best_candidate(candidates: dict[str, dict[str, float]], metric: str) -> str:
    """The candidate with the best value of `metric` (ties go to the first in params order)."""
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    return max(candidates, key=lambda name: sign * candidates[name][metric])


def floor_failures(metrics: dict[str, float], floors: dict[str, float]) -> list[str]:
    """Which absolute floors a candidate misses, as readable sentences."""
    failures = []
    for name, floor in floors.items():
        value = metrics[name]
        ok = value >= floor if HIGHER_IS_BETTER[name] else value <= floor
        if not ok or value != value:  # NaN never passes
            relation = "below" if HIGHER_IS_BETTER[name] else "above"
            failures.append(f"{name}={value:.4f} is {relation} the floor {floor}")
    return failures
