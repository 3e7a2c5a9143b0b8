"""The server's sliding-window drift: `/drift` and the drift gauges follow the live inputs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from pipeline.data.sources.simulated import ID_COLUMN, TARGET, simulate_churn
from tests.api.conftest import Trained


def records(n: int, seed: int, drift: float) -> list[dict[str, Any]]:
    frame = simulate_churn(n, seed, drift).drop(columns=[ID_COLUMN, TARGET])
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")  # type: ignore[return-value]


def send(client: TestClient, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), 500):
        answer = client.post("/predict/batch", json={"records": rows[start : start + 500]})
        assert answer.status_code == 200, answer.text[:600]


def gauges(client: TestClient, model: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The drift gauges of `model`, by name and their other labels."""
    out = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name.startswith(("bitloop_drift", "bitloop_dataset_drift", "bitloop_feature_")):
                labels = dict(sample.labels)
                if labels.pop("model") == model:
                    out[(sample.name, tuple(sorted(labels.items())))] = sample.value
    return out


def wait_for_rows(client: TestClient, rows: int) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:  # the prediction log commits in the background within ~50 ms
        report: dict[str, Any] = client.get("/drift", params={"fresh": True}).json()
        if report["rows"] >= rows or time.monotonic() > deadline:
            return report
        time.sleep(0.1)


def test_drift_follows_live_traffic(make_client: Callable[..., TestClient], churn_model: Trained) -> None:
    client = make_client(churn_model.name)
    empty = client.get("/drift").json()
    assert empty["status"] == "insufficient_data"
    assert empty["message"] == f"not enough data yet: 0 of {empty['min_rows']} rows"
    assert (
        gauges(client, churn_model.name)[("bitloop_drift_min_rows", ())] == empty["min_rows"] == 200
    )  # params.yaml
    send(client, records(150, 20, 0.0))
    assert wait_for_rows(client, 150)["message"] == "not enough data yet: 150 of 200 rows"

    send(client, records(1050, 21, 0.0))
    calm = wait_for_rows(client, 1200)
    assert calm["status"] == "no_drift"
    assert calm["model"]["version"] == churn_model.version
    values = gauges(client, churn_model.name)
    assert values[("bitloop_dataset_drift", ())] == 0.0
    assert values[("bitloop_drift_window_rows", ())] == 1200
    assert values[("bitloop_drift_last_evaluation_timestamp_seconds", ())] > time.time() - 60

    send(client, records(3000, 22, 1.0))
    drifted = wait_for_rows(client, 4200)
    assert drifted["status"] == "drift"
    assert "monthly_charges" in drifted["drifted_features"]
    values = gauges(client, churn_model.name)
    assert values[("bitloop_dataset_drift", ())] == 1.0
    assert values[("bitloop_drift_share", ())] == drifted["drift_share"]
    labels = (("feature", "monthly_charges"), ("method", "wasserstein"))
    score, threshold = values[("bitloop_drift_score", labels)], values[("bitloop_drift_threshold", labels)]
    assert score >= threshold == 0.1
    assert values[("bitloop_feature_drift_detected", (("feature", "monthly_charges"),))] == 1.0
    assert values[("bitloop_feature_drift_detected", (("feature", "region"),))] == 0.0
    # Only the current method of a feature is exported: small-sample series are gone.
    assert not any(name == "bitloop_drift_score" and ("method", "ks") in labels for name, labels in values)


def test_the_periodic_evaluation_publishes_without_being_asked(
    make_client: Callable[..., TestClient], churn_model: Trained
) -> None:
    client = make_client(churn_model.name, drift_interval_seconds=0.2)
    send(client, records(400, 23, 1.0))
    deadline = time.monotonic() + 15
    while gauges(client, churn_model.name).get(("bitloop_drift_window_rows", ()), 0) < 400:
        assert time.monotonic() < deadline, "the drift gauges were never updated"
        time.sleep(0.2)
    assert gauges(client, churn_model.name)[("bitloop_dataset_drift", ())] == 1.0
