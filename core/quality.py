"""Live model quality: logged predictions against the true outcomes that arrived for them.

For each model version and variant in a window of the prediction log: the realized metrics of
the labelled predictions (the same `task_metrics` that scores a holdout), the share of
predictions labelled and how late labels came, and for classifiers an estimate of accuracy and
ROC AUC from the predicted probabilities alone, available before any label arrives.

The estimate is confidence-based performance estimation (CBPE, as NannyML calls it): if the
model's probabilities are calibrated, a row predicted with probability p for its class is right
with probability p, so expected accuracy is the mean probability of the predicted class, and
expected true and false positives at every threshold give an expected ROC curve. The served
models' probabilities are not all calibrated: each version's calibration map, fitted on its
holdout (`core.calibration`), corrects them first. No library in the lock does it, and it is
a few lines of numpy (NannyML, which does, caps Python below 3.13, brings a heavy dependency set
and sends usage analytics by default). It holds while
the relation between inputs and outcome stays as trained (covariate drift); when that relation
changes (concept drift) the probabilities stay confident and the estimate stays put: only the
realized figure sees it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from core.calibration import Calibration
from core.model_metrics import task_metrics
from core.params import HIGHER_IS_BETTER, PromoteParams, QualityParams
from core.predictions.rows import LoggedPrediction


class VersionQuality(BaseModel):
    """Quality of one version answering as one variant, over the window."""

    version: str
    variant: str
    predictions: int = Field(description="predictions logged in the window")
    labelled: int = Field(description="of them, with a true outcome")
    coverage: float = Field(ge=0.0, le=1.0, description="labelled / predictions")
    lag_seconds: float | None = Field(description="median time from prediction to its outcome")
    realized: dict[str, float] = Field(
        description="metrics on the labelled predictions; empty below min_labelled"
    )
    estimated: dict[str, float] = Field(
        description="classifiers: accuracy and ROC AUC expected from the probabilities (CBPE)"
    )
    holdout: dict[str, float] = Field(description="the version's metrics on its holdout, when it is served")
    breaches: list[str] = Field(description="realized figures worse than a floor or than the holdout allows")


class Limit(BaseModel):
    """The worst acceptable live value of one metric for one version."""

    metric: str
    version: str
    kind: Literal["floor", "holdout"]
    value: float
    higher_is_better: bool

    def breached_by(self, value: float) -> bool:
        return value < self.value if self.higher_is_better else value > self.value

    def sentence(self, value: float) -> str:
        relation = "below" if self.higher_is_better else "above"
        source = "the floor" if self.kind == "floor" else "the holdout figure less quality.max_drop"
        return f"{self.metric}={value:.4f} is {relation} {source} ({self.value:.4f})"


class QualityReport(BaseModel):
    """One evaluation: what /performance answers and the gauges show."""

    model_name: str
    task: str
    primary_metric: str
    evaluated_at: str
    window_seconds: float
    max_rows: int
    min_labelled: int
    versions: list[VersionQuality]


def limits(
    task: str, version: str, holdout: dict[str, float], quality: QualityParams, promote: PromoteParams
) -> list[Limit]:
    """A version's limits: every floor of promote.floors, and its holdout figure of the primary
    metric less quality.max_drop."""
    found = [
        Limit(metric=m, version=version, kind="floor", value=v, higher_is_better=HIGHER_IS_BETTER[m])
        for m, v in promote.floors.get(task, {}).items()  # type: ignore[call-overload]
    ]
    primary = promote.primary_metric(task)  # type: ignore[arg-type]
    figure = holdout.get(primary)
    if figure is not None and math.isfinite(figure):
        better = HIGHER_IS_BETTER[primary]
        allowed = figure - quality.max_drop if better else figure + quality.max_drop
        found.append(
            Limit(metric=primary, version=version, kind="holdout", value=allowed, higher_is_better=better)
        )
    return found


def expected_accuracy(confidence: np.ndarray) -> float:
    """Expected accuracy of predictions made with these probabilities of the predicted class."""
    return float(np.mean(confidence))


def expected_roc_auc(score: np.ndarray) -> float:
    """Expected ROC AUC of a score that is also the calibrated probability of the positive class.

    Each row counts as p of a positive and 1 - p of a negative: expected true and false positive
    rates at every distinct threshold give the curve, integrated by trapezoids (ties share a step).
    """
    score = np.asarray(score, dtype=float)
    positives, negatives = score.sum(), (1.0 - score).sum()
    if positives <= 0.0 or negatives <= 0.0:
        return float("nan")
    order = np.argsort(-score, kind="stable")
    ranked = score[order]
    last_of_tie = np.r_[np.diff(ranked) != 0, True]
    tpr = np.r_[0.0, np.cumsum(ranked)[last_of_tie] / positives]
    fpr = np.r_[0.0, np.cumsum(1.0 - ranked)[last_of_tie] / negatives]
    return float(np.trapezoid(tpr, fpr))


def estimate(predicted: list[Any], probabilities: np.ndarray, classes: list[Any]) -> dict[str, float]:
    """CBPE: accuracy and ROC AUC (one-vs-rest, macro, for more than two classes) expected from
    probabilities, one column per class in `classes` order."""
    index = {str(c): i for i, c in enumerate(classes)}
    confidence = probabilities[np.arange(len(predicted)), [index[str(p)] for p in predicted]]
    if len(classes) == 2:
        auc = expected_roc_auc(probabilities[:, 1])
    else:
        auc = float(np.mean([expected_roc_auc(probabilities[:, i]) for i in range(len(classes))]))
    return {"accuracy": expected_accuracy(confidence), "roc_auc": auc}


def evaluate(
    rows: list[LoggedPrediction],
    task: str,
    classes: list[Any],
    quality: QualityParams,
    promote: PromoteParams,
    holdouts: dict[str, dict[str, float]],
    calibrations: dict[str, Calibration] | None = None,
) -> list[VersionQuality]:
    """Quality per (version, variant), newest version first; realized and estimated figures only
    from quality.min_labelled labelled (respectively logged) predictions on. `holdouts` holds the
    served versions' holdout metrics, which set their limits; `calibrations` their calibration
    maps, which correct the probabilities the estimate reads."""
    calibrations = calibrations or {}
    groups: dict[tuple[str, str], list[LoggedPrediction]] = defaultdict(list)
    for row in rows:
        groups[(row.version, row.variant)].append(row)
    reports = []
    for (version, variant), group in groups.items():
        found = _group_quality(
            version, variant, group, task, classes, quality.min_labelled, calibrations.get(version)
        )
        holdout = holdouts.get(version, {})
        breaches = [
            limit.sentence(found.realized[limit.metric])
            for limit in limits(task, version, holdout, quality, promote)
            if limit.metric in found.realized and limit.breached_by(found.realized[limit.metric])
        ]
        reports.append(found.model_copy(update={"holdout": holdout, "breaches": breaches}))
    return sorted(reports, key=lambda r: (-_numeric(r.version), r.version, r.variant))


def _numeric(version: str) -> float:
    return float(version) if version.isdigit() else -1.0


def _group_quality(
    version: str,
    variant: str,
    rows: list[LoggedPrediction],
    task: str,
    classes: list[Any],
    min_labelled: int,
    calibration: Calibration | None = None,
) -> VersionQuality:
    labelled = [r for r in rows if r.labelled]
    lags = [r.received_at - r.ts for r in labelled if r.received_at is not None]
    realized: dict[str, float] = {}
    estimated: dict[str, float] = {}
    if task == "classification":
        scored = [r for r in rows if r.probabilities is not None]
        if len(scored) >= min_labelled:
            matrix = _matrix(scored, classes)
            if calibration is not None:
                matrix = calibration.reordered(classes).apply(matrix)
            estimated = estimate([r.prediction for r in scored], matrix, classes)
    if len(labelled) >= min_labelled:
        realized = realized_metrics(labelled, task, classes)
    return VersionQuality(
        version=version,
        variant=variant,
        predictions=len(rows),
        labelled=len(labelled),
        coverage=len(labelled) / len(rows),
        lag_seconds=float(np.median(lags)) if lags else None,
        realized={k: v for k, v in realized.items() if np.isfinite(v)},
        estimated={k: v for k, v in estimated.items() if np.isfinite(v)},
        holdout={},
        breaches=[],
    )


def realized_metrics(
    labelled: list[LoggedPrediction], task: str, classes: list[Any], only: str | None = None
) -> dict[str, float]:
    """The task's metrics (or `only` one) of labelled predictions against their outcomes; none for a
    classifier whose rows lack probabilities."""
    arrays = outcome_arrays(labelled, task, classes)
    if arrays is None:
        return {}
    y, predicted, proba = arrays
    return task_metrics(
        task, y, predicted, proba, [str(c) for c in classes] if proba is not None else None, only
    )


def outcome_arrays(
    labelled: list[LoggedPrediction], task: str, classes: list[Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """Outcomes, predictions and (classification) probabilities as arrays, classes as text; None for
    a classifier whose rows lack probabilities."""
    if task == "classification":
        if not all(r.probabilities is not None for r in labelled):
            return None
        return (
            np.array([str(r.outcome) for r in labelled], dtype=object),
            np.array([str(r.prediction) for r in labelled], dtype=object),
            _matrix(labelled, classes),
        )
    return (
        np.array([float(r.outcome) for r in labelled]),
        np.array([float(r.prediction) for r in labelled]),
        None,
    )


def _matrix(rows: list[LoggedPrediction], classes: list[Any]) -> np.ndarray:
    """The rows' probabilities, one column per class (logged keys are the classes as text)."""
    keys = [str(c) for c in classes]
    return np.array([[(r.probabilities or {}).get(k, 0.0) for k in keys] for r in rows], dtype=float)
