"""A canary rollout on the model server and its decider, against a real MLflow and prediction log:
the split, entity stickiness, the stable version answering what the canary cannot, and the decider
promoting a good candidate and rolling back one whose predictions are shifted."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from sklearn.pipeline import Pipeline

from core.params import CandidateParams, parse_params
from core.predictions.access import read_rows
from core.rollout import Terms, current, in_canary, start
from core.settings import PipelineSettings
from pipeline.loop.decider import conclude, decide
from pipeline.stages.models import build_pipeline
from tests.api.conftest import Trained, holdout_records, train_model
from tests.api.test_faults import register_version
from tests.factories import light_params

pytestmark = pytest.mark.integration
Client = Callable[..., TestClient]
NAME = "canary-churn"


@dataclass(frozen=True)
class Registry:
    trained: Trained
    stable: str
    uri: str

    def register(self, model: Pipeline) -> str:
        return register_version(self.uri, NAME, model, self.trained)


def blind(trained: Trained) -> Pipeline:
    """A candidate without imputation: fitted on complete rows, it raises on a record with a missing
    number (a few percent of them), and scores the complete sample it must score to be served."""
    numeric = list(trained.schema.numeric)
    sample = pd.read_parquet(trained.workspace.test_file)[trained.schema.feature_names].head(5)
    assert not sample[numeric].isna().any().any(), "the logged sample holds a missing number"
    train = pd.read_parquet(trained.workspace.train_file).dropna(subset=numeric)
    model = build_pipeline(CandidateParams(kind="linear"), trained.schema, 7, 20)
    model.set_params(preprocess__numeric__simpleimputer="passthrough")
    return model.fit(train[trained.schema.feature_names], train[trained.schema.target])


def incomplete(record: dict[str, Any], trained: Trained) -> bool:
    return any(record[name] is None for name in trained.schema.numeric)


def linear(
    trained: Trained, frame: pd.DataFrame | None = None, shift: float = 0.0, **encoder: Any
) -> Pipeline:
    """The linear candidate fitted on the training split (or `frame`); `shift` moves its intercept."""
    frame = pd.read_parquet(trained.workspace.train_file) if frame is None else frame
    model = build_pipeline(CandidateParams(kind="linear"), trained.schema, 7, 20)
    model.set_params(**{f"preprocess__categorical__onehotencoder__{k}": v for k, v in encoder.items()})
    model.fit(frame[trained.schema.feature_names], frame[trained.schema.target])
    model[-1].intercept_ = model[-1].intercept_ + shift
    return model


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> Registry:
    trained = train_model(tmp_path_factory.mktemp("canary"), mlflow_uri, NAME)
    stable = register_version(mlflow_uri, NAME, linear(trained), trained)  # the same runtime as candidates
    return Registry(trained, stable, mlflow_uri)


def begin(registry: Registry, candidate: str, share: float, min_requests: int = 150) -> None:
    client = MlflowClient(registry.uri)
    client.set_registered_model_alias(NAME, "champion", registry.stable)
    start(client, NAME, candidate, registry.stable, Terms(share, min_requests, 60.0))


def ids_of(records: list[dict[str, Any]], prefix: str) -> list[str]:
    return [f"{prefix}-{i}" for i in range(len(records))]


def test_the_canary_answers_its_share_and_every_entity_keeps_its_side(
    make_client: Client, registry: Registry
) -> None:
    candidate = registry.register(linear(registry.trained))
    begin(registry, candidate, share=0.3)
    client = make_client(NAME)
    records = holdout_records(registry.trained, 300)
    ids = ids_of(records, "customer")
    singles = [
        client.post("/predict", params={"id": i}, json=r).json() for i, r in zip(ids, records, strict=True)
    ]
    sides = {i: (a["variant"], a["model_version"]) for i, a in zip(ids, singles, strict=True)}
    seen = Counter(sides.values())
    assert set(seen) == {("champion", registry.stable), ("canary", candidate)}
    assert 0.3 * 300 - 4 * 8 < seen[("canary", candidate)] < 0.3 * 300 + 4 * 8  # 4 standard deviations
    # Again, alone and inside a batch: every entity on the side it had.
    again = [
        client.post("/predict", params={"id": i}, json=r).json() for i, r in zip(ids, records, strict=True)
    ]
    assert [(a["variant"], a["model_version"]) for a in again] == list(sides.values())
    batch = client.post("/predict/batch", json={"records": records, "ids": ids}).json()
    assert batch["model_versions"] == [sides[i][1] for i in ids]
    assert (batch["variant"], batch["model_version"]) == ("champion", registry.stable)  # most rows
    # Without ids, a batch goes whole to one side.
    assert client.post("/predict/batch", json={"records": records[:5]}).json()["model_versions"] is None

    shown = client.get("/model").json()
    assert shown["version"] == registry.stable
    assert shown["rollout"]["canary_version"] == candidate
    assert (shown["rollout"]["canary_share"], shown["rollout"]["stable_share"]) == (0.3, 0.7)
    assert shown["rollout"]["min_requests"] == 150
    assert 'bitloop_rollout_share{model="canary-churn"} 0.3' in client.get("/metrics").text
    log_path = client.app.state.bitloop.settings.prediction_log_url  # type: ignore[attr-defined]
    client.__exit__(None, None, None)
    logged = Counter((row.entity_id, row.variant) for row in read_rows(log_path))
    assert {entity for entity, variant in logged if variant == "canary" and entity is not None} == {
        i for i in ids if sides[i][0] == "canary"
    }


def test_records_the_canary_fails_on_are_answered_by_the_stable_version(
    make_client: Client, registry: Registry
) -> None:
    """A candidate that raises on records with a missing number; no client sees that."""
    candidate = registry.register(blind(registry.trained))
    begin(registry, candidate, share=0.5)
    client = make_client(NAME)
    records = holdout_records(registry.trained, 200)
    assert any(incomplete(r, registry.trained) for r in records)
    ids = ids_of(records, "slice")
    answers = [client.post("/predict", params={"id": i}, json=r) for i, r in zip(ids, records, strict=True)]
    assert {a.status_code for a in answers} == {200}
    batch = client.post("/predict/batch", json={"records": records, "ids": ids})
    assert batch.status_code == 200, batch.text
    for record, answer, version in zip(records, answers, batch.json()["model_versions"], strict=True):
        if incomplete(record, registry.trained):  # the canary failed: the stable version answered
            assert answer.json()["model_version"] == version == registry.stable
    metrics = client.get("/metrics").text
    fallbacks = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("bitloop_canary_fallbacks_total{") and f'version="{candidate}"' in line
    ]
    on_canary = [
        in_canary(i, candidate, 0.5) and incomplete(r, registry.trained)
        for i, r in zip(ids, records, strict=True)
    ]
    assert sum(on_canary) > 0
    assert fallbacks == [2.0 * sum(on_canary)]  # each such record, alone and in the batch
    assert f'variant="canary",version="{candidate}"' in "".join(
        line for line in metrics.splitlines() if line.startswith("bitloop_prediction_failures_total{")
    )


def test_a_canary_alias_set_by_hand_is_refused(make_client: Client, registry: Registry) -> None:
    client = MlflowClient(registry.uri)
    bare = registry.register(linear(registry.trained))
    client.set_registered_model_alias(NAME, "champion", registry.stable)
    client.set_registered_model_alias(NAME, "canary", bare)
    server = make_client(NAME)
    answers = {
        server.post("/predict", json=r).json()["variant"] for r in holdout_records(registry.trained, 50)
    }
    assert answers == {"champion"}
    refused = server.get("/model").json()["refused"]
    assert [(r["variant"], r["version"]) for r in refused] == [("canary", bare)]
    assert "no rollout terms" in refused[0]["reason"]
    client.delete_registered_model_alias(NAME, "canary")


def rollout_params(tmp_path: Path) -> Any:
    raw = light_params(model={"name": NAME}, rollout={"min_requests": 150})
    return parse_params(raw)


def drive(client: TestClient, registry: Registry, prefix: str, rows: int = 600) -> None:
    """`rows` records (the holdout's, over again) in batches of 100, each with its own entity id."""
    holdout = holdout_records(registry.trained, rows)
    records = [holdout[i % len(holdout)] for i in range(rows)]
    for first in range(0, rows, 100):
        chunk = records[first : first + 100]
        ids = [f"{prefix}-{first + i}" for i in range(len(chunk))]
        answer = client.post("/predict/batch", json={"records": chunk, "ids": ids})
        assert answer.status_code == 200, answer.text


def test_the_decider_promotes_a_good_canary_and_rolls_back_a_shifted_one(
    tmp_path: Path, make_client: Client, registry: Registry
) -> None:
    params = rollout_params(tmp_path)
    settings = PipelineSettings(mlflow_tracking_uri=registry.uri)  # no Prometheus: records from the log
    mlflow = MlflowClient(registry.uri)

    good = registry.register(linear(registry.trained))
    begin(registry, good, share=0.5)
    client = make_client(NAME)
    log_path = client.app.state.bitloop.settings.prediction_log_url  # type: ignore[attr-defined]
    assert decide(params, settings, log_path)["action"] == "wait"  # nothing answered yet
    drive(client, registry, "good")
    client.__exit__(None, None, None)  # every answer in the log
    verdict = decide(params, settings, log_path)
    assert verdict["action"] == "promote", verdict
    assert mlflow.get_model_version_by_alias(NAME, "champion").version == good
    assert mlflow.get_model_version_by_alias(NAME, "previous").version == registry.stable
    assert "canary" not in mlflow.get_registered_model(NAME).aliases
    assert mlflow.get_model_version(NAME, good).tags["bitloop.rollout.outcome"] == "promoted"
    assert decide(params, settings, log_path)["action"] == "none"

    shifted = registry.register(linear(registry.trained, shift=3.0))
    begin(registry, shifted, share=0.5)
    client = make_client(NAME)
    log_path = client.app.state.bitloop.settings.prediction_log_url  # type: ignore[attr-defined]
    drive(client, registry, "shifted")
    client.__exit__(None, None, None)
    verdict = decide(params, settings, log_path)
    assert verdict["action"] == "rollback", verdict
    assert verdict["reason"].startswith("predictions SLO failed: PSI")
    assert mlflow.get_model_version_by_alias(NAME, "champion").version == registry.stable
    assert "canary" not in mlflow.get_registered_model(NAME).aliases
    tags = mlflow.get_model_version(NAME, shifted).tags
    assert (tags["bitloop.decision"], tags["bitloop.rollout.outcome"]) == ("rolled_back", "rolled_back")
    assert "PSI" in tags["bitloop.rollout.figures"]
    server = make_client(NAME)
    last = server.get("/model").json()["last_rollout"]
    assert (last["version"], last["outcome"]) == (shifted, "rolled_back")
    assert (
        f'bitloop_rollout_last_timestamp_seconds{{model="{NAME}",outcome="rolled_back",version="{shifted}"}}'
        in (server.get("/metrics").text)
    )


class Died(Exception):
    """Where the decider's process ended."""


def dying_at(uri: str, method: str) -> MlflowClient:
    """A registry client whose process ends at its first call of `method`."""
    client = MlflowClient(uri)

    def die(*args: Any, **kwargs: Any) -> None:
        raise Died(method)

    setattr(client, method, die)
    return client


def test_a_decider_that_dies_half_way_is_finished_by_the_next_one_not_judged_again(
    tmp_path: Path, registry: Registry
) -> None:
    params = rollout_params(tmp_path)
    settings = PipelineSettings(mlflow_tracking_uri=registry.uri)
    mlflow = MlflowClient(registry.uri)
    log = str(tmp_path / "predictions.sqlite")  # no evidence at all: judged again, it would wait

    promoted = registry.register(linear(registry.trained))
    begin(registry, promoted, share=0.5, min_requests=10**6)
    rollout = current(mlflow, NAME)
    assert rollout is not None
    with pytest.raises(Died):  # decided, and gone before @champion moved
        conclude(dying_at(registry.uri, "set_registered_model_alias"), rollout, "promoted", "held", {})
    assert mlflow.get_model_version_by_alias(NAME, "champion").version == registry.stable
    report = decide(params, settings, log)
    assert (report["action"], report["resumed"], report["reason"]) == ("promote", True, "held")
    assert mlflow.get_model_version_by_alias(NAME, "champion").version == promoted
    assert mlflow.get_model_version_by_alias(NAME, "previous").version == registry.stable
    assert "canary" not in mlflow.get_registered_model(NAME).aliases
    assert decide(params, settings, log)["action"] == "none"

    refused = registry.register(linear(registry.trained))
    begin(registry, refused, share=0.5, min_requests=10**6)
    rollout = current(mlflow, NAME)
    assert rollout is not None
    figures = {"latency": "fail: canary 10x"}
    with pytest.raises(Died):  # rolled back, and gone before @canary was deleted
        conclude(
            dying_at(registry.uri, "delete_registered_model_alias"), rollout, "rolled_back", "slow", figures
        )
    assert mlflow.get_model_version_by_alias(NAME, "canary").version == refused
    report = decide(params, settings, log)
    assert (report["action"], report["resumed"], report["figures"]) == ("rollback", True, figures)
    assert mlflow.get_model_version_by_alias(NAME, "champion").version == registry.stable
    assert "canary" not in mlflow.get_registered_model(NAME).aliases
    last = json.loads(mlflow.get_registered_model(NAME).tags["bitloop.rollout.last"])
    assert (last["version"], last["outcome"], last["reason"]) == (refused, "rolled_back", "slow")

    begin(registry, refused, share=0.5, min_requests=10**6)  # started again: undecided, not resumed
    assert decide(params, settings, log)["action"] == "wait"
    MlflowClient(registry.uri).delete_registered_model_alias(NAME, "canary")


def pipeline_cli(root: Path, uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"MLFLOW_TRACKING_URI": uri, "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "--root", str(root), "rollout", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_a_person_can_end_a_rollout_and_nothing_to_act_on_is_an_error(registry: Registry) -> None:
    root = registry.trained.workspace.root
    mlflow = MlflowClient(registry.uri)
    mlflow.set_registered_model_alias(NAME, "champion", registry.stable)
    for action in ("promote", "abort"):
        done = pipeline_cli(root, registry.uri, action)
        assert done.returncode == 1
        assert f"{NAME} has no @canary: no rollout is under way" in done.stderr
    candidate = registry.register(linear(registry.trained))
    begin(registry, candidate, share=0.2)
    shown = pipeline_cli(root, registry.uri, "status")
    assert shown.returncode == 0, shown.stderr
    assert '"version": "' + candidate + '"' in shown.stdout
    done = pipeline_cli(root, registry.uri, "abort", "--by", "ops")
    assert done.returncode == 0, done.stderr
    assert mlflow.get_model_version_by_alias(NAME, "champion").version == registry.stable
    tags = mlflow.get_model_version(NAME, candidate).tags
    assert (tags["bitloop.decision"], tags["bitloop.decision_reason"]) == ("aborted", "aborted by hand (ops)")
