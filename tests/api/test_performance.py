"""Live quality through the model server: outcomes sent to `/feedback` become realized metrics per
version and variant in `GET /performance` and the Prometheus gauges, beside the estimate, the
holdout figure and the limits the alerts compare with."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sklearn import metrics as skm

from core.calibration import CALIBRATION_FILE, Calibration
from pipeline.workspace import read_json
from tests.api.conftest import Trained, holdout_records
from tests.api.test_feedback import logged

pytestmark = pytest.mark.integration
Client = Callable[..., TestClient]
ROWS = 160  # holdout rows in a batch


def truth(trained: Trained, rows: int) -> list[Any]:
    return pd.read_parquet(trained.workspace.test_file)[trained.schema.target].head(rows).tolist()


def gauges(client: TestClient, name: str, model: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of one metric of one model, by their other labels."""
    found = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            labels = dict(sample.labels)
            if sample.name == name and labels.pop("model") == model:
                found[tuple(sorted(labels.items()))] = sample.value
    return found


def send(client: TestClient, request_id: str, outcomes: list[Any]) -> int:
    """Send each row's outcome; how many were recorded."""
    body = {"outcomes": [{"request_id": request_id, "row": i, "outcome": o} for i, o in enumerate(outcomes)]}
    answer = client.post("/feedback", json=body)
    assert answer.status_code == 200, answer.text
    recorded: int = answer.json()["recorded"]
    return recorded


def holdout_answered(
    make_client: Client, trained: Trained, tmp_path: Path, rows: int = 1000
) -> tuple[TestClient, list[Any], dict[str, Any]]:
    """A server whose log holds its answer to the model's holdout (at most `rows` of it): the
    client, the true values and the answer."""
    log = tmp_path / "log.sqlite"
    client = make_client(trained.name, prediction_log_url=str(log))
    records = holdout_records(trained, rows)
    answer = client.post("/predict/batch", json={"records": records}).json()
    logged(log, len(records))
    return client, truth(trained, rows), answer


def test_outcomes_become_live_quality_with_coverage_estimate_and_limits(
    make_client: Client, churn_model: Trained, tmp_path: Path
) -> None:
    client, labels, answer = holdout_answered(make_client, churn_model, tmp_path)
    records = holdout_records(churn_model, len(labels))
    unlabelled = len(records) // 4
    assert client.post("/predict/batch", json={"records": records[:unlabelled]}).status_code == 200
    logged(tmp_path / "log.sqlite", len(records) + unlabelled)
    assert send(client, answer["request_id"], labels) == len(records)

    report = client.get("/performance", params={"fresh": "true"}).json()
    assert report["model_name"] == churn_model.name
    assert report["primary_metric"] == "roc_auc"
    (found,) = report["versions"]
    assert (found["version"], found["variant"]) == (churn_model.version, "champion")
    assert (found["predictions"], found["labelled"]) == (len(records) + unlabelled, len(records))
    assert found["coverage"] == pytest.approx(len(records) / (len(records) + unlabelled))
    assert 0 <= found["lag_seconds"] < 60
    # The labelled predictions are the version's whole holdout: live figures are its holdout figures.
    for metric in ("accuracy", "f1", "roc_auc", "log_loss", "brier", "ece"):
        assert found["realized"][metric] == pytest.approx(found["holdout"][metric], abs=1e-4), metric
    positive = str(churn_model.schema.classes[-1])
    assert found["realized"]["roc_auc"] == pytest.approx(
        skm.roc_auc_score(labels, [p[positive] for p in answer["probabilities"]])
    )
    assert set(found["estimated"]) == {"accuracy", "roc_auc"}
    # The estimate reads the answered probabilities through the version's calibration map.
    every = answer["probabilities"] + answer["probabilities"][:unlabelled]
    best = read_json(churn_model.workspace.registered_file)["best"]
    fitted = read_json(churn_model.workspace.evaluation_dir / best / CALIBRATION_FILE)
    classes = [str(c) for c in churn_model.schema.classes]
    stated = np.array([[p[c] for c in classes] for p in every])
    calibrated = Calibration.model_validate(fitted).reordered(classes).apply(stated)
    expected = calibrated[np.arange(len(every)), stated.argmax(axis=1)].mean()
    assert found["estimated"]["accuracy"] == pytest.approx(expected)
    assert found["breaches"] == []

    version = churn_model.version
    champion = (("variant", "champion"), ("version", version))
    live = gauges(client, "bitloop_live_quality", churn_model.name)
    assert live[(("metric", "accuracy"), *champion)] == pytest.approx(found["realized"]["accuracy"])
    assert gauges(client, "bitloop_label_coverage_ratio", churn_model.name)[champion] == pytest.approx(
        found["coverage"]
    )
    assert gauges(client, "bitloop_labelled_predictions", churn_model.name)[champion] == len(records)
    assert (("metric", "roc_auc"), *champion) in gauges(client, "bitloop_estimated_quality", churn_model.name)
    limits = gauges(client, "bitloop_live_quality_limit", churn_model.name)
    floor = (("better", "higher"), ("kind", "floor"), ("metric", "roc_auc"), ("version", version))
    holdout = (("better", "higher"), ("kind", "holdout"), ("metric", "roc_auc"), ("version", version))
    assert limits[floor] == 0.6  # promote.floors of params.yaml
    assert limits[holdout] == pytest.approx(found["holdout"]["roc_auc"] - 0.05)  # less quality.max_drop


def test_wrong_predictions_breach_the_floor_and_the_holdout(
    make_client: Client, churn_model: Trained, tmp_path: Path
) -> None:
    client, labels, answer = holdout_answered(make_client, churn_model, tmp_path, ROWS)
    classes = list(churn_model.schema.classes)
    flipped = [classes[1 - classes.index(label)] for label in labels]
    assert send(client, answer["request_id"], flipped) == ROWS

    (found,) = client.get("/performance", params={"fresh": "true"}).json()["versions"]
    assert found["realized"]["roc_auc"] < 0.4
    assert [b.split(" is ")[0].split("=")[0] for b in found["breaches"]] == ["roc_auc", "roc_auc"]
    assert any("floor (0.6000)" in b for b in found["breaches"])
    assert any("holdout figure less quality.max_drop" in b for b in found["breaches"])


def test_regression_quality_and_no_figures_below_min_labelled(
    make_client: Client, diabetes_model: Trained, tmp_path: Path
) -> None:
    client, values, answer = holdout_answered(make_client, diabetes_model, tmp_path)
    assert len(values) > 100  # quality.min_labelled
    assert send(client, answer["request_id"], values[:50]) == 50
    (found,) = client.get("/performance", params={"fresh": "true"}).json()["versions"]
    assert (found["labelled"], found["realized"], found["estimated"]) == (50, {}, {})
    assert gauges(client, "bitloop_live_quality", diabetes_model.name) == {}

    assert send(client, answer["request_id"], values) == len(values) - 50  # the first 50: duplicates
    report = client.get("/performance", params={"fresh": "true"}).json()
    assert report["primary_metric"] == "rmse"
    (found,) = report["versions"]
    errors = [p - v for p, v in zip(answer["predictions"], values, strict=True)]
    assert found["labelled"] == len(values)
    assert found["realized"]["mae"] == pytest.approx(sum(abs(e) for e in errors) / len(errors))
    assert found["realized"]["rmse"] == pytest.approx(math.sqrt(sum(e * e for e in errors) / len(errors)))
    for metric in ("rmse", "mae", "r2"):  # the whole holdout, labelled: its holdout figures
        assert found["realized"][metric] == pytest.approx(found["holdout"][metric], rel=1e-4), metric


def test_performance_needs_the_api_key(make_client: Client, churn_model: Trained) -> None:
    client = make_client(churn_model.name, api_key="s3cret")
    assert client.get("/performance").status_code == 401
    answer = client.get("/performance", headers={"X-API-Key": "s3cret"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["versions"] == []
