"""A/B routing to @challenger and shadow scoring: the variant is in the response, log and metrics."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from core.predictions.access import read_rows
from tests.api.conftest import Trained, sample_record, train_model

pytestmark = pytest.mark.integration
Client = Callable[..., TestClient]


@pytest.fixture(scope="module")
def with_challenger(tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> tuple[Trained, str]:
    trained = train_model(tmp_path_factory.mktemp("ab"), mlflow_uri, "ab-churn")
    client = MlflowClient(mlflow_uri)
    other = next(
        v.version for v in client.search_model_versions("name = 'ab-churn'") if v.version != trained.version
    )
    client.set_registered_model_alias("ab-churn", "challenger", other)
    return trained, str(other)


def variants_logged(path: Path) -> Counter[tuple[str, str]]:
    return Counter((row.variant, row.model_version) for row in read_rows(path))


def test_ab_share_routes_traffic_to_the_challenger(
    make_client: Client, with_challenger: tuple[Trained, str]
) -> None:
    trained, challenger = with_challenger
    client = make_client(trained.name, challenger_share=0.5)
    answers = [client.post("/predict", json=sample_record(trained.schema)).json() for _ in range(80)]
    seen = Counter((a["variant"], a["model_version"]) for a in answers)
    assert set(seen) == {("champion", trained.version), ("challenger", challenger)}
    assert min(seen.values()) > 15
    metrics = client.get("/metrics").text
    assert (
        'bitloop_model_info{model="ab-churn",runtime="onnx",variant="challenger",'
        f'version="{challenger}"}} 1.0' in metrics
    )
    assert any(
        line.startswith("bitloop_predictions_total{") and 'variant="challenger"' in line
        for line in metrics.splitlines()
    )
    log_path = client.app.state.bitloop.settings.prediction_log_url  # type: ignore[attr-defined]
    client.__exit__(None, None, None)
    assert variants_logged(log_path) == seen


def test_shadow_scores_the_challenger_without_changing_answers(
    make_client: Client, with_challenger: tuple[Trained, str]
) -> None:
    trained, challenger = with_challenger
    client = make_client(trained.name, shadow=True)
    answers = [client.post("/predict", json=sample_record(trained.schema)).json() for _ in range(10)]
    assert {(a["variant"], a["model_version"]) for a in answers} == {("champion", trained.version)}
    batch = client.post("/predict/batch", json={"records": [sample_record(trained.schema)] * 5})
    assert batch.json()["variant"] == "champion"
    log_path = client.app.state.bitloop.settings.prediction_log_url  # type: ignore[attr-defined]
    client.__exit__(None, None, None)
    assert variants_logged(log_path) == {("champion", trained.version): 15, ("shadow", challenger): 15}
