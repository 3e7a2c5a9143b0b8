"""How far a classifier's probabilities are from the frequencies they claim, and the map that
corrects them for the estimate of quality before labels.

A classifier is calibrated when, of the rows it gives probability p, a share p turn out so. The
estimate before labels (CBPE, `core.quality`) reads probabilities as such frequencies, so it is
biased for models that are not: tree ensembles, bitloop's usual champions, are not (a gradient
boosting model overstates its ROC AUC, more so as inputs drift). Evaluation fits,
per candidate, a calibration map on the holdout and logs it with the version; the model server
applies it to logged probabilities before estimating. The model, its ONNX graph and every answer
stay as they are: the map corrects what the estimate reads, not what clients get, so the parity
check and reproducibility are untouched.

The map is Platt scaling per class (one-vs-rest logistic regression on the log-odds, rows
renormalised for more than two classes): two numbers a class, strictly increasing, so it never
reorders rows and never reaches 0 or 1 on a holdout of a few hundred rows the way an isotonic
step function does. A global map cannot correct a model whose calibration differs between
regions of the input space: under strong covariate drift the estimate of a random forest still
errs (`tests/core/test_calibration.py` measures each candidate kind).

The expected calibration error (ECE: the gap between confidence and accuracy, averaged over ten
equal-width bins of the predicted class's probability, weighted by rows) is the figure calibration
papers report; scikit-learn has the Brier score but no ECE, and it is a few lines of numpy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

ECE_BINS = 10
LOGIT_CLIP = 1e-6
CALIBRATION_FILE = "calibration.json"
"""Each classifier candidate's map, in its evaluation folder (logged under `evaluation/`)."""


def _logit(p: np.ndarray) -> np.ndarray:
    clipped = np.clip(p, LOGIT_CLIP, 1.0 - LOGIT_CLIP)
    return np.asarray(np.log(clipped / (1.0 - clipped)))


class Calibration(BaseModel):
    """A fitted map: for each class, calibrated = sigmoid(slope * logit(p) + intercept)."""

    classes: list[str] = Field(description="the model's classes, in its probability columns' order")
    slope: list[float]
    intercept: list[float]

    def reordered(self, classes: Sequence[Any]) -> Calibration:
        """The same map for probability columns in `classes` order (the feature schema's, say)."""
        order = [self.classes.index(str(c)) for c in classes]
        return Calibration(
            classes=[self.classes[i] for i in order],
            slope=[self.slope[i] for i in order],
            intercept=[self.intercept[i] for i in order],
        )

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """The calibrated probabilities, one column per class, rows summing to 1."""
        proba = np.asarray(probabilities, dtype=float)
        if len(self.classes) == 2:  # one map, for the second class; the first is its complement
            second = 1.0 / (1.0 + np.exp(-(self.slope[1] * _logit(proba[:, 1]) + self.intercept[1])))
            return np.column_stack([1.0 - second, second])
        mapped = 1.0 / (1.0 + np.exp(-(np.asarray(self.slope) * _logit(proba) + np.asarray(self.intercept))))
        return np.asarray(mapped / mapped.sum(axis=1, keepdims=True))


def fit_calibration(
    outcomes: Iterable[Any], probabilities: np.ndarray, classes: Sequence[Any]
) -> Calibration:
    """Platt scaling per class, fitted on a holdout's outcomes and the model's probabilities. A class
    whose map would not increase with the model's probability (a holdout too small or too odd to
    learn from) keeps the identity map."""
    from sklearn.linear_model import LogisticRegression

    names = [str(c) for c in classes]
    truth = np.array([str(o) for o in outcomes])
    proba = np.asarray(probabilities, dtype=float)
    slopes, intercepts = [], []
    for index, name in enumerate(names):
        hits = (truth == name).astype(int)
        if 0 < hits.sum() < len(hits):
            # Barely regularised: two parameters on hundreds of rows need no shrinking.
            fitted = LogisticRegression(C=1e4).fit(_logit(proba[:, index])[:, None], hits)
            slope, intercept = float(fitted.coef_[0, 0]), float(fitted.intercept_[0])
            if slope > 0:
                slopes.append(slope)
                intercepts.append(intercept)
                continue
        slopes.append(1.0)
        intercepts.append(0.0)
    return Calibration(classes=names, slope=slopes, intercept=intercepts)


def calibration_error(outcomes: Iterable[Any], predicted: Iterable[Any], confidence: np.ndarray) -> float:
    """ECE: |accuracy - mean confidence| per equal-width bin of the predicted class's probability,
    weighted by the bin's rows."""
    confidence = np.asarray(confidence, dtype=float)
    if len(confidence) == 0:
        return float("nan")
    right = np.array([str(o) == str(p) for o, p in zip(outcomes, predicted, strict=True)], dtype=float)
    bins = np.minimum((confidence * ECE_BINS).astype(int), ECE_BINS - 1)
    total = 0.0
    for b in np.unique(bins):
        inside = bins == b
        total += inside.sum() * abs(right[inside].mean() - confidence[inside].mean())
    return float(total / len(confidence))
