"""Live quality: windowed metrics over logged predictions and their true outcomes, and the estimate
of quality before labels (CBPE), which tracks realized quality under covariate drift and, as it
must, misses concept drift."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn.pipeline import Pipeline

from core.model_metrics import task_metrics
from core.params import CandidateParams, DataParams, PromoteParams, QualityParams
from core.predictions.access import insert_rows, read_labelled
from core.predictions.backends import open_store
from core.predictions.rows import LoggedPrediction, Row
from core.quality import estimate, evaluate, expected_roc_auc, limits
from core.schema import DatasetSchema, infer_schema
from pipeline.data.sources.simulated import ID_COLUMN, TARGET, simulate_churn
from pipeline.stages.models import build_pipeline

CLASSES = [0, 1]
QUALITY = QualityParams(min_labelled=1, max_drop=0.05)


def prediction(ts: float, p: float, outcome: int | None, version: str = "1") -> LoggedPrediction:
    return LoggedPrediction(
        ts,
        version,
        "champion",
        int(p >= 0.5),
        {"0": 1 - p, "1": p},
        outcome,
        None if outcome is None else ts + 60,
    )


def test_expected_roc_auc_of_certain_and_of_uninformative_scores() -> None:
    assert expected_roc_auc(np.array([0.0, 1.0, 1.0, 0.0])) == pytest.approx(1.0)
    assert expected_roc_auc(np.full(50, 0.3)) == pytest.approx(0.5)
    assert math.isnan(expected_roc_auc(np.ones(5)))  # no expected negatives: undefined


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_estimates_match_outcomes_drawn_from_calibrated_probabilities(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.beta(0.7, 1.3, size=40_000)
    outcome = (rng.random(p.size) < p).astype(int)  # calibrated: each row is positive with its p
    proba = np.column_stack([1 - p, p])
    predicted = (p >= 0.5).astype(int)
    realized = task_metrics("classification", outcome, predicted, proba, CLASSES)
    expected = estimate(list(predicted), proba, CLASSES)
    assert expected["accuracy"] == pytest.approx(realized["accuracy"], abs=0.01)
    assert expected["roc_auc"] == pytest.approx(realized["roc_auc"], abs=0.01)


@pytest.fixture(scope="module")
def reference_model() -> tuple[Pipeline, DatasetSchema]:
    """The linear candidate trained on the reference world: logistic regression, whose
    probabilities are calibrated, as the estimate assumes."""
    train = simulate_churn(4000, 1)
    schema = infer_schema(
        train, DataParams(source="simulated", target=TARGET, task="classification", id_column=ID_COLUMN)
    )
    model = build_pipeline(CandidateParams(kind="linear", alpha=1.0), schema, 42, 25)
    return model.fit(train[schema.feature_names], train[TARGET]), schema


def realized_and_estimated(
    model: Pipeline, schema: DatasetSchema, drift: float, concept: float
) -> tuple[dict[str, float], dict[str, float]]:
    world = simulate_churn(20_000, 9, drift, concept)
    x = world[schema.feature_names]
    proba, predicted = model.predict_proba(x), model.predict(x)
    classes = list(model.classes_)
    realized = task_metrics("classification", world[TARGET], predicted, proba, classes)
    return realized, estimate(list(predicted), proba, classes)


def test_the_estimate_tracks_realized_quality_under_covariate_drift(
    reference_model: tuple[Pipeline, DatasetSchema],
) -> None:
    calm, _ = realized_and_estimated(*reference_model, 0.0, 0.0)
    for drift in (0.0, 0.5, 1.0):
        realized, estimated = realized_and_estimated(*reference_model, drift, 0.0)
        for metric in ("accuracy", "roc_auc"):
            assert estimated[metric] == pytest.approx(realized[metric], abs=0.02), (drift, metric)
    # The shifted population is harder, and the estimate saw that without a single label.
    assert realized["accuracy"] < calm["accuracy"] - 0.1
    assert estimated["accuracy"] < calm["accuracy"] - 0.1


def test_concept_drift_escapes_the_estimate_and_the_realized_figure_catches_it(
    reference_model: tuple[Pipeline, DatasetSchema],
) -> None:
    calm, calm_estimate = realized_and_estimated(*reference_model, 0.0, 0.0)
    realized, estimated = realized_and_estimated(*reference_model, 0.0, 1.0)
    # Inputs did not move, so the probabilities, and the estimate, stay where they were ...
    assert estimated["accuracy"] == pytest.approx(calm_estimate["accuracy"], abs=0.01)
    # ... while the customers now answer differently: realized accuracy falls well below it.
    for metric in ("accuracy", "roc_auc"):
        assert realized[metric] < estimated[metric] - 0.05, metric
        assert realized[metric] < calm[metric] - 0.05, metric
    holdout_limit = limits("classification", "1", {"roc_auc": calm["roc_auc"]}, QUALITY, PromoteParams())
    assert [lim.kind for lim in holdout_limit] == ["holdout"]
    assert holdout_limit[0].breached_by(realized["roc_auc"])


def test_versions_and_variants_are_judged_apart_with_their_limits() -> None:
    now = time.time()
    good = [prediction(now, p, int(p >= 0.5)) for p in np.linspace(0.05, 0.95, 40)]
    bad = [prediction(now, p, int(p < 0.5), version="2") for p in np.linspace(0.05, 0.95, 40)]
    unlabelled = [prediction(now, 0.9, None, version="2") for _ in range(40)]
    promote = PromoteParams(floors={"classification": {"roc_auc": 0.6}})
    holdouts = {"1": {"roc_auc": 0.9}, "2": {"roc_auc": 0.9}}
    found = {
        q.version: q
        for q in evaluate(good + bad + unlabelled, "classification", CLASSES, QUALITY, promote, holdouts)
    }
    assert [*found] == ["2", "1"]  # newest version first
    assert found["1"].realized["accuracy"] == 1.0
    assert found["1"].breaches == []
    assert found["2"].realized["accuracy"] == 0.0
    assert found["2"].coverage == 0.5
    assert found["2"].labelled == 40
    assert found["2"].predictions == 80
    assert found["2"].lag_seconds == pytest.approx(60)
    assert len(found["2"].breaches) == 2  # below the floor, and below the holdout less max_drop
    assert found["2"].estimated["accuracy"] > 0.7  # confident predictions: the estimate cannot know


def test_no_realized_figures_below_min_labelled() -> None:
    rows = [prediction(0.0, 0.8, 1) for _ in range(9)] + [prediction(0.0, 0.8, None)]
    (found,) = evaluate(rows, "classification", CLASSES, QualityParams(min_labelled=10), PromoteParams(), {})
    assert found.realized == {}
    assert found.labelled == 9
    assert found.estimated != {}


def test_regression_quality() -> None:
    rows = [LoggedPrediction(0.0, "1", "champion", float(v), None, float(v) + 1.0, 1.0) for v in range(20)]
    (found,) = evaluate(rows, "regression", [], QUALITY, PromoteParams(), {})
    assert found.realized["mae"] == pytest.approx(1.0)
    assert found.realized["rmse"] == pytest.approx(1.0)
    assert found.estimated == {}


logged = st.lists(
    st.tuples(
        st.integers(0, 100_000).map(lambda cs: cs / 100),  # seconds after the start, to the 1/100
        st.floats(0.01, 0.99),  # probability of class 1
        st.lists(st.sampled_from([0, 1]), max_size=4),  # outcomes sent, in order
    ),
    min_size=1,
    max_size=40,
    unique_by=lambda row: row[0],  # the window's newest rows are well defined
)


@settings(max_examples=40, deadline=None)
@given(logged, st.integers(0, 1000), st.integers(0, 1000), st.integers(1, 50))
def test_window_reads_count_each_prediction_and_its_first_outcome_once(
    rows: list[tuple[float, float, list[int]]], since: int, until: int, limit: int
) -> None:
    assume(since < until)
    start = 1_700_000_000.0
    with tempfile.TemporaryDirectory() as folder:
        url = str(Path(folder) / "log.sqlite")
        insert_rows(
            url,
            [
                Row(start + t, f"r{i}", "m", "1", "champion", {"x": 1}, int(p >= 0.5), {"0": 1 - p, "1": p})
                for i, (t, p, _) in enumerate(rows)
            ],
        )
        store = open_store(url)
        try:
            for i, (_, _, sent) in enumerate(rows):
                for outcome in sent:
                    store.add_outcome(f"r{i}", 0, outcome, start + 2000)
            store.commit()
        finally:
            store.close()
        read = read_labelled(url, "m", since=start + since, until=start + until, limit=limit)

    inside = sorted((t, i) for i, (t, _, _) in enumerate(rows) if since <= t < until)[-limit:]
    assert [r.ts for r in read] == [start + t for t, _ in inside]  # bounds, limit, newest kept
    firsts = {i: sent[0] for i, (_, _, sent) in enumerate(rows) if sent}
    assert [r.outcome for r in read] == [firsts.get(i) for _, i in inside]  # the first sent stays
    if read:
        (found,) = evaluate(read, "classification", CLASSES, QUALITY, PromoteParams(), {})
        assert found.predictions == len(inside)
        assert found.labelled == sum(1 for _, i in inside if i in firsts)  # once however often sent
        assert 0.0 <= found.coverage <= 1.0
