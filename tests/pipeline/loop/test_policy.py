"""The retraining policy against a real MLflow: a signal starts training only when listed in
retrain.triggers, at most once per cooldown across drift and quality, never without a champion."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.params import parse_params
from core.predictions.backends import open_store
from core.settings import PipelineSettings
from pipeline.loop.policy import gate
from tests.api.conftest import Trained, train_model
from tests.factories import light_params

pytestmark = pytest.mark.integration
START = datetime(2001, 1, 1, tzinfo=UTC)  # long past: later real-time signals are never cooled down


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> Trained:
    return train_model(tmp_path_factory.mktemp("policy-project"), mlflow_uri, "policy-churn")


def test_one_triggered_run_per_cooldown_across_signals(
    model: Trained, mlflow_uri: str, tmp_path: Path
) -> None:
    params = parse_params(light_params(model={"name": model.name}, retrain={"cooldown_hours": 1}))
    settings = PipelineSettings(
        mlflow_tracking_uri=mlflow_uri, prediction_log_url=str(tmp_path / "log.sqlite")
    )
    first = gate(params, settings, "drift", START)
    assert first["retrain"] is True
    held = gate(params, settings, "quality", START + timedelta(minutes=59))
    assert held["retrain"] is False
    assert "cooling down: drift started training at 2001-01-01T00:00:00+00:00" in held["reason"]
    assert "may start at 2001-01-01T01:00:00+00:00" in held["reason"]
    assert gate(params, settings, "quality", START + timedelta(minutes=61))["retrain"] is True
    assert gate(params, settings, "drift", START + timedelta(minutes=90))["retrain"] is False  # quality's now
    assert (
        gate(params, settings, "schedule", START + timedelta(minutes=90))["retrain"] is True
    )  # its own period


def test_signals_left_out_of_the_triggers_never_start_training(
    model: Trained, mlflow_uri: str, tmp_path: Path
) -> None:
    params = parse_params(light_params(model={"name": model.name}, retrain={"triggers": ["quality"]}))
    settings = PipelineSettings(
        mlflow_tracking_uri=mlflow_uri, prediction_log_url=str(tmp_path / "log.sqlite")
    )
    for signal in ("drift", "schedule"):
        verdict = gate(params, settings, signal, START)
        assert verdict == {
            "retrain": False,
            "signal": signal,
            "reason": f"retrain.triggers leaves out {signal}",
        }


def test_no_champion_no_retraining(mlflow_uri: str) -> None:
    params = parse_params(light_params(model={"name": "never-trained"}))
    verdict = gate(params, PipelineSettings(mlflow_tracking_uri=mlflow_uri), "drift", START)
    assert verdict["retrain"] is False
    assert verdict["reason"] == "never-trained has no @champion yet"


def test_the_policy_refuses_unknown_triggers() -> None:
    with pytest.raises(ValueError, match=r"retrain\.triggers"):
        parse_params(light_params(retrain={"triggers": ["drift", "moon"]}))


def test_of_many_claims_at_once_exactly_one_wins_on_both_stores(log_url: str) -> None:
    """Eight monitors find drift at the same moment: the claim is one atomic statement, so one of
    them starts training and the other seven are told who holds it."""
    now = START.timestamp()
    barrier = threading.Barrier(8)
    results: list[tuple[str, float] | Exception | None] = []

    def claim(index: int) -> None:
        store = open_store(log_url)
        try:
            barrier.wait()
            results.append(store.claim_retrain("claimed-churn", f"drift-{index}", now, 3600.0))
        except Exception as err:  # collected: an assert in a thread would not fail the test
            results.append(err)
        finally:
            store.close()

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [r for r in results if isinstance(r, Exception)] == []
    assert results.count(None) == 1
    holders = {r for r in results if isinstance(r, tuple)}
    assert len(holders) == 1  # every loser names the one claim that holds
    assert next(iter(holders))[1] == now
    store = open_store(log_url)
    try:  # within the cooldown no one claims; once it has passed, the next one does
        assert store.claim_retrain("claimed-churn", "quality", now + 3599.0, 3600.0) is not None
        assert store.claim_retrain("claimed-churn", "quality", now + 3600.0, 3600.0) is None
        assert store.claim_retrain("other-model", "drift", now, 3600.0) is None  # models apart
    finally:
        store.close()
