"""The retraining policy against a real MLflow: a signal starts training only when listed in
retrain.triggers, at most once per cooldown across drift and quality, never without a champion."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pipeline.params import parse_params
from pipeline.policy import gate
from pipeline.settings import PipelineSettings
from tests.api.conftest import Trained, train_model
from tests.factories import light_params

pytestmark = pytest.mark.integration
START = datetime(2001, 1, 1, tzinfo=UTC)  # long past: later real-time signals are never cooled down


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> Trained:
    return train_model(tmp_path_factory.mktemp("policy-project"), mlflow_uri, "policy-churn")


def test_one_triggered_run_per_cooldown_across_signals(model: Trained, mlflow_uri: str) -> None:
    params = parse_params(light_params(model={"name": model.name}, retrain={"cooldown_hours": 1}))
    settings = PipelineSettings(mlflow_tracking_uri=mlflow_uri)
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


def test_signals_left_out_of_the_triggers_never_start_training(model: Trained, mlflow_uri: str) -> None:
    params = parse_params(light_params(model={"name": model.name}, retrain={"triggers": ["quality"]}))
    settings = PipelineSettings(mlflow_tracking_uri=mlflow_uri)
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
