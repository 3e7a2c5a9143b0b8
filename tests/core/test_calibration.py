"""Calibration: the error figures on known cases, the map that corrects probabilities, and the
estimate before labels it corrects, measured for every default candidate kind under covariate
drift (`pytest -s tests/core/test_calibration.py` prints the gaps the README states)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from core.calibration import Calibration, calibration_error, fit_calibration
from core.model_metrics import score, task_metrics
from core.params import load_params
from core.quality import estimate
from core.schema import infer_schema
from pipeline.data.sources.simulated import simulate_churn
from pipeline.stages.models import build_pipeline
from tests.factories import PROJECT


def draws(rows: int, seed: int, sharpen: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outcomes drawn from probabilities p, and the probabilities a model states: p itself
    (calibrated) or p pushed towards 0 and 1 (`sharpen` > 1: overconfident)."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0.02, 0.98, rows)
    outcomes = (rng.random(rows) < truth).astype(int)
    logit = np.log(truth / (1 - truth)) * sharpen
    stated = 1 / (1 + np.exp(-logit))
    return outcomes, np.column_stack([1 - stated, stated]), truth


def test_the_error_figures_on_known_cases() -> None:
    outcomes, proba, _ = draws(40_000, 1)
    predicted = (proba[:, 1] > 0.5).astype(int)
    calibrated = task_metrics("classification", outcomes, predicted, proba, [0, 1])
    assert calibrated["ece"] < 0.015  # calibrated by construction: only sampling noise
    _, overconfident, _ = draws(40_000, 1, sharpen=3.0)
    sharp = task_metrics("classification", outcomes, predicted, overconfident, [0, 1])
    assert sharp["ece"] > 0.1
    assert sharp["brier"] > calibrated["brier"]
    # Exact values: a certain and right model, and a coin.
    certain = np.column_stack([1 - outcomes, outcomes]).astype(float)
    assert task_metrics("classification", outcomes, outcomes, certain, [0, 1])["brier"] == 0.0
    assert calibration_error(outcomes, outcomes, np.ones(len(outcomes))) == 0.0
    coin = np.full((4, 2), 0.5)
    assert task_metrics("classification", [0, 1, 1, 0], [0, 0, 0, 0], coin, [0, 1])["brier"] == 0.25


def test_the_map_corrects_an_overconfident_model_and_keeps_a_calibrated_one() -> None:
    outcomes, overconfident, _ = draws(5_000, 2, sharpen=3.0)
    fitted = fit_calibration(outcomes, overconfident, [0, 1])
    fresh_outcomes, fresh, _ = draws(40_000, 3, sharpen=3.0)
    predicted = (fresh[:, 1] > 0.5).astype(int)
    before = calibration_error(fresh_outcomes, predicted, fresh.max(axis=1))
    after = calibration_error(fresh_outcomes, predicted, fitted.apply(fresh).max(axis=1))
    assert after < 0.02 < 0.1 < before
    assert fitted.slope[1] == pytest.approx(1 / 3, rel=0.1)  # it undoes the sharpening
    outcomes, calibrated, _ = draws(5_000, 4)
    kept = fit_calibration(outcomes, calibrated, [0, 1])
    assert kept.slope[1] == pytest.approx(1.0, abs=0.1)
    assert kept.intercept[1] == pytest.approx(0.0, abs=0.1)


def test_the_map_never_reorders_rows_and_follows_the_columns() -> None:
    outcomes, overconfident, _ = draws(2_000, 6, sharpen=2.0)
    binary = fit_calibration(outcomes, overconfident, [0, 1])
    order = np.argsort(overconfident[:, 1])
    assert np.all(np.diff(binary.apply(overconfident)[order, 1]) >= 0)  # the ranking, hence ROC AUC, stays
    rng = np.random.default_rng(5)
    proba = rng.dirichlet([1, 1, 1], 300)
    labels = [["a", "b", "c"][i] for i in proba.argmax(axis=1)]
    fitted = fit_calibration(labels, proba, ["a", "b", "c"])
    mapped = fitted.apply(proba)
    assert np.allclose(mapped.sum(axis=1), 1.0)
    permuted = fitted.reordered(["c", "a", "b"]).apply(proba[:, [2, 0, 1]])
    assert np.allclose(permuted, mapped[:, [2, 0, 1]])
    # A class the holdout cannot teach (never seen) keeps the identity map.
    assert fit_calibration(["a"] * 300, proba, ["a", "b", "c"]).slope[1:] == [1.0, 1.0]


# --- the estimate before labels, for the models bitloop serves -----------------------------------

DRIFTS = (0.0, 0.5, 1.0)


@pytest.fixture(scope="module")
def fitted_kinds() -> dict[str, tuple[object, Calibration, list[str]]]:
    """Each default candidate, trained on the reference world (two batches) and calibrated on a
    holdout of it, as evaluation does."""
    params = load_params(PROJECT / "params.yaml")
    train = pd.concat([simulate_churn(4000, 1), simulate_churn(4000, 2)], ignore_index=True)
    holdout = simulate_churn(2000, 3)
    schema = infer_schema(train, params.data)
    found = {}
    for name, candidate in params.train.candidates.items():
        model = build_pipeline(candidate, schema, params.train.seed, params.train.max_categories)
        with threadpool_limits(limits=1):
            model.fit(train[schema.feature_names], train[schema.target])
            proba = model.predict_proba(holdout[schema.feature_names])
        found[name] = (model, fit_calibration(holdout[schema.target], proba, list(model.classes_)), schema)
    return found  # type: ignore[return-value]


def estimate_gap(
    fitted: tuple[object, Calibration, object], drift: float, calibrated: bool
) -> dict[str, float]:
    """Estimated minus realized accuracy and ROC AUC on 20,000 customers of a world whose inputs
    drifted this far while the relation stayed (covariate drift)."""
    model, calibration, schema = fitted
    live = simulate_churn(20_000, 100 + int(drift * 10), drift, concept=0.0)
    features = live[schema.feature_names]  # type: ignore[attr-defined]
    with threadpool_limits(limits=1):
        proba = model.predict_proba(features)  # type: ignore[attr-defined]
        predicted = model.predict(features)  # type: ignore[attr-defined]
    realized = score(model, live, schema)  # type: ignore[arg-type]
    read = calibration.apply(proba) if calibrated else proba
    estimated = estimate(list(predicted), read, list(model.classes_))  # type: ignore[attr-defined]
    return {m: estimated[m] - realized[m] for m in ("accuracy", "roc_auc")}


KNOWN_MISS = {("random_forest", 1.0)}
"""A global map cannot correct a forest whose calibration differs by region: with the inputs fully
drifted its estimated ROC AUC reads 0.024 low (accuracy 0.018), as the README says."""


@pytest.mark.slow
@pytest.mark.parametrize("drift", DRIFTS)
@pytest.mark.parametrize("kind", ["linear", "random_forest", "hist_gradient_boosting"])
def test_the_calibrated_estimate_is_within_two_points_of_the_realized_figure(
    fitted_kinds: dict[str, tuple[object, Calibration, object]], kind: str, drift: float
) -> None:
    gap = estimate_gap(fitted_kinds[kind], drift, calibrated=True)
    raw = estimate_gap(fitted_kinds[kind], drift, calibrated=False)
    print(f"{kind} drift {drift}: estimate - realized {gap} (without the map {raw})")  # pytest -s shows it
    if (kind, drift) in KNOWN_MISS:
        assert max(abs(g) for g in gap.values()) < 0.05, gap  # the miss, bounded where it is stated
        return
    assert abs(gap["accuracy"]) <= 0.02, gap
    assert abs(gap["roc_auc"]) <= 0.02, gap


@pytest.mark.slow
def test_without_the_map_the_boosting_estimate_overstates_its_quality(
    fitted_kinds: dict[str, tuple[object, Calibration, object]],
) -> None:
    """What the map is for: the raw probabilities of the gradient-boosting candidate put its ROC AUC
    more than two points too high once the inputs drift."""
    gap = estimate_gap(fitted_kinds["hist_gradient_boosting"], 1.0, calibrated=False)
    assert gap["roc_auc"] > 0.02, gap
