"""Hostile and malformed bodies get a 4xx that can always be rendered; the server keeps serving."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.schemas import NUMERIC_LIMIT
from api.validation import MAX_ERRORS
from tests.api.conftest import Trained, holdout_records, sample_record

pytestmark = pytest.mark.integration
Client = Callable[..., TestClient]
JSON = {"content-type": "application/json"}


def post(client: TestClient, body: bytes | str, path: str = "/predict", **headers: str) -> Any:
    return client.post(path, content=body, headers={**JSON, **headers})


@pytest.fixture
def client(make_client: Client, churn_model: Trained) -> TestClient:
    return make_client(churn_model.name)


def still_serving(client: TestClient, trained: Trained) -> bool:
    return bool(client.post("/predict", json=sample_record(trained.schema)).status_code == 200)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "recursion limit"),
        (b'{"records": ' + b"[" * 5000 + b"]" * 5000 + b"}", "recursion limit"),
        (b'{"age": ' + b"9" * 5000 + b"}", "number out of range"),
        (b'{"region": "\\ud800"}', "hex escape"),
        (b'{"\\udfff": 1}', "hex escape"),
        (b"\xff\xfe{}", "Invalid JSON"),
    ],
    ids=[
        "deep-array",
        "deep-records",
        "long-integer",
        "lone-surrogate-value",
        "lone-surrogate-key",
        "bad-utf8",
    ],
)
def test_unparseable_bodies_are_422_and_never_echoed(
    client: TestClient, churn_model: Trained, body: bytes, words: str
) -> None:
    for path in ("/predict", "/predict/batch"):
        response = client.post(path, content=body, headers=JSON)
        assert response.status_code == 422, (path, response.text[:300])
        assert len(response.content) < 2000  # the body is not echoed back
        [error] = response.json()["detail"]
        assert error["loc"] == ["body"]
        assert words in error["msg"]
    assert still_serving(client, churn_model)


def test_values_beyond_what_the_model_can_hold_are_422_naming_the_field(
    client: TestClient, churn_model: Trained
) -> None:
    record = sample_record(churn_model.schema)
    for value in ("1e300", "-3.5e38", "9" * 400):
        text = json.dumps(record).replace('"monthly_charges": 1.0', f'"monthly_charges": {value}')
        response = post(client, text)
        assert response.status_code == 422, value
        assert [e["loc"] for e in response.json()["detail"]] == [["body", "monthly_charges"]]
    edge = client.post("/predict", json=record | {"monthly_charges": NUMERIC_LIMIT})
    assert edge.status_code == 200
    spec = client.get("/openapi.json").json()["components"]["schemas"]["Record"]["properties"]
    bounds = next(v for v in spec["monthly_charges"]["anyOf"] if v.get("type") == "number")
    assert bounds["maximum"] == NUMERIC_LIMIT
    assert bounds["minimum"] == -NUMERIC_LIMIT


def test_a_surrogate_in_an_accepted_position_is_rendered_escaped(client: TestClient) -> None:
    """Python-side inputs (not JSON) can still hold lone surrogates: the 422 renders them escaped."""
    from api.validation import render_errors

    rendered = render_errors([{"type": "x", "loc": ("body", "\ud800"), "msg": "m\udfff", "input": "\ud800"}])
    json.dumps(rendered).encode()
    assert rendered[0]["loc"] == ["body", "\\ud800"]
    assert rendered[0]["input"] == "\\ud800"


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""]
)
def test_bodies_not_declared_json_are_415(
    client: TestClient, churn_model: Trained, content_type: str
) -> None:
    body = json.dumps(sample_record(churn_model.schema))
    headers = {"content-type": content_type} if content_type else {}
    for path in ("/predict", "/predict/batch"):
        response = client.post(path, content=body, headers=headers)
        assert response.status_code == 415, (content_type, response.text)
        assert "application/json" in response.json()["detail"]


def test_json_with_a_charset_is_json(client: TestClient, churn_model: Trained) -> None:
    body = json.dumps(sample_record(churn_model.schema))
    response = post(client, body, **{"content-type": "application/json; charset=utf-8"})
    assert response.status_code == 200


def test_a_thousand_bad_records_get_a_short_answer(make_client: Client, churn_model: Trained) -> None:
    client = make_client(churn_model.name, max_body_bytes=4 * 1024 * 1024)
    bad = sample_record(churn_model.schema) | {"age": "old", "region": 7}
    response = client.post("/predict/batch", json={"records": [bad] * 1000})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert len(detail) == MAX_ERRORS + 1
    assert detail[0]["loc"] == ["body", "records", 0, "age"]
    assert detail[-1]["type"] == "too_many_errors"
    assert "1950 more errors" in detail[-1]["msg"]
    assert len(response.content) < 20_000


def test_a_streamed_body_over_the_limit_is_refused(make_client: Client, churn_model: Trained) -> None:
    """No Content-Length to trust: the limit is enforced on the stream itself."""
    client = make_client(churn_model.name, max_body_bytes=4096)

    def chunks():
        for _ in range(1000):
            yield b" " * 1024

    response = client.post("/predict", content=chunks(), headers=JSON)
    assert response.status_code == 422
    assert "exceeds the limit of 4096 bytes" in response.json()["detail"][0]["msg"]
    assert still_serving(client, churn_model)


def columns_of(records: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {name: [r.get(name) for r in records] for name in records[0]}


def test_a_columnar_batch_answers_as_the_same_records_do(client: TestClient, churn_model: Trained) -> None:
    records = holdout_records(churn_model, 40)
    as_records = client.post("/predict/batch", json={"records": records}).json()
    as_columns = client.post("/predict/batch", json={"columns": columns_of(records)})
    assert as_columns.status_code == 200, as_columns.text
    assert as_columns.json()["predictions"] == as_records["predictions"]
    assert as_columns.json()["probabilities"] == as_records["probabilities"]
    nullable = next(f.name for f in churn_model.schema.features if f.nullable)
    without = {k: v for k, v in columns_of(records).items() if k != nullable}  # absent means missing
    missing = [{**r, nullable: None} for r in records]
    assert (
        client.post("/predict/batch", json={"columns": without}).json()["predictions"]
        == client.post("/predict/batch", json={"records": missing}).json()["predictions"]
    )


def test_a_columnar_batch_gets_422s_naming_the_field_and_row(
    client: TestClient, churn_model: Trained
) -> None:
    records = holdout_records(churn_model, 5)
    numeric = next(f.name for f in churn_model.schema.features if f.kind == "numeric")
    categorical = next(f.name for f in churn_model.schema.features if f.kind == "categorical")

    def errors(columns: dict[str, Any]) -> list[dict[str, Any]]:
        answer = client.post("/predict/batch", json={"columns": columns})
        assert answer.status_code == 422, answer.text
        found: list[dict[str, Any]] = answer.json()["detail"]
        return found

    bad = columns_of(records)
    bad[numeric][3] = "twelve"
    bad[categorical][1] = "not-a-category"
    locs = [e["loc"] for e in errors(bad)]
    assert ["body", "columns", numeric, 3] in locs
    assert any(loc[:4] == ["body", "columns", categorical, 1] for loc in locs)
    short = {**columns_of(records), numeric: [1.0, 2.0]}
    assert errors(short) == [
        {
            "type": "rows",
            "loc": ["body", "columns", numeric],
            "msg": f"has 2 values; {next(iter(short))!r} has 5",
        }
    ] or any(e["loc"] == ["body", "columns", numeric] for e in errors(short))
    unknown = errors({**columns_of(records), "shoe_size": [1] * 5})
    assert any(e["loc"][:3] == ["body", "columns", "shoe_size"] for e in unknown)
    assert errors({})[0]["loc"][:2] == ["body", "columns"]
    too_many = {name: values * 300 for name, values in columns_of(records).items()}  # 1,500 > 1,000 rows
    assert errors(too_many)[0]["loc"] == ["body", "columns"]
