"""Any record drawn from the served schema is answered; breaking one field gets a 422 naming it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.main import create_app
from api.schemas import build_record_model
from api.settings import ApiSettings
from core.schema import DatasetSchema, FeatureSpec
from tests.api.conftest import Trained

pytestmark = pytest.mark.integration
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


def value_for(spec: FeatureSpec) -> st.SearchStrategy[Any]:
    base = finite | st.integers(-1000, 1000) if spec.kind == "numeric" else st.sampled_from(spec.categories)
    return base | st.none() if spec.nullable else base


def records(schema: DatasetSchema) -> st.SearchStrategy[dict[str, Any]]:
    """Valid records; a nullable feature may be null or left out altogether."""
    required = {f.name: value_for(f) for f in schema.features if not f.nullable}
    optional = {f.name: value_for(f) for f in schema.features if f.nullable}
    return st.fixed_dictionaries(required, optional=optional)


WRONG = {
    "numeric": st.one_of(
        st.text(min_size=1, max_size=5),
        st.booleans(),
        st.just(float("nan")),
        st.just(float("inf")),
        st.lists(st.integers(), max_size=2),
    ),
    "categorical": st.one_of(st.text(min_size=1, max_size=8), st.integers(), st.booleans()),
}


@pytest.fixture(scope="module")
def client(
    churn_model: Trained, mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    log = Path(tmp_path_factory.mktemp("log"))
    settings = ApiSettings(
        mlflow_tracking_uri=mlflow_uri,
        model_name=churn_model.name,
        prediction_log_url=str(log / "p.sqlite"),
        prediction_log_spill_dir=log / "spill",
        reload_interval_seconds=3600,
    )
    with TestClient(create_app(settings)) as c:
        yield c


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_generated_records_are_answered(
    data: st.DataObject, client: TestClient, churn_model: Trained
) -> None:
    record = data.draw(records(churn_model.schema))
    response = client.post("/predict", json=record)
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == churn_model.version


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_one_broken_field_is_named(data: st.DataObject, client: TestClient, churn_model: Trained) -> None:
    schema = churn_model.schema
    record = data.draw(records(schema))
    spec = data.draw(st.sampled_from(schema.features))
    breakage = data.draw(st.sampled_from(["wrong"] + ([] if spec.nullable else ["null", "missing"])))
    if breakage == "missing":
        del record[spec.name]
    else:
        wrong = WRONG[spec.kind].filter(lambda v: v not in spec.categories)
        record[spec.name] = None if breakage == "null" else data.draw(wrong)
    response = client.post(
        "/predict", content=json.dumps(record), headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, (spec.name, record.get(spec.name), response.text)
    assert {tuple(e["loc"]) for e in response.json()["detail"]} == {("body", spec.name)}


@given(names=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=8, unique=True))
def test_any_column_names_make_a_valid_record_model(names: list[str]) -> None:
    schema = DatasetSchema(
        task="regression",
        target="y",
        id_column=None,
        features=tuple(FeatureSpec(name=n, kind="numeric", nullable=False) for n in names),
    )
    model = build_record_model(schema, closed_categories=True)
    parsed = model.model_validate(dict.fromkeys(names, 1.5))
    assert parsed.model_dump(by_alias=True) == dict.fromkeys(names, 1.5)
