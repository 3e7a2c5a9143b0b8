"""Arrow IPC stream batches: the same answers as JSON records, 422s that name the field and row,
and hostile streams refused before anything is decoded."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from api.arrow import ARROW_STREAM, read_columns, wants_arrow
from tests.api.conftest import Trained, holdout_records

pytestmark = pytest.mark.integration
Client = Callable[..., TestClient]
ARROW = {"content-type": ARROW_STREAM}


def stream(table: pa.Table, chunk: int | None = None, compression: str | None = None) -> bytes:
    sink = io.BytesIO()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        for batch in table.to_batches(max_chunksize=chunk):
            writer.write_batch(batch)
    return sink.getvalue()


def frame_of(records: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame.from_records(records)


def read(answer: Any) -> pa.Table:
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == ARROW_STREAM
    return pa.ipc.open_stream(answer.content).read_all()


def errors(answer: Any) -> list[dict[str, Any]]:
    assert answer.status_code == 422, answer.text
    found: list[dict[str, Any]] = answer.json()["detail"]
    return found


@pytest.fixture
def client(make_client: Client, churn_model: Trained) -> TestClient:
    return make_client(churn_model.name)


def test_an_arrow_batch_answers_as_the_same_json_records_do(client: TestClient, churn_model: Trained) -> None:
    records = holdout_records(churn_model, 60)
    as_json = client.post("/predict/batch", json={"records": records}).json()
    table = pa.Table.from_pandas(frame_of(records), preserve_index=False)
    categorical = [f.name for f in churn_model.schema.features if f.kind == "categorical"]
    for name in categorical:  # a pandas category column arrives dictionary-encoded
        table = table.set_column(
            table.schema.get_field_index(name), name, table[name].combine_chunks().dictionary_encode()
        )
    body = stream(table, chunk=7)  # several record batches

    json_answer = client.post("/predict/batch", content=body, headers=ARROW)
    assert json_answer.status_code == 200, json_answer.text
    assert json_answer.json()["predictions"] == as_json["predictions"]
    assert json_answer.json()["probabilities"] == as_json["probabilities"]

    answer = read(client.post("/predict/batch", content=body, headers={**ARROW, "accept": ARROW_STREAM}))
    classes = [str(c) for c in churn_model.schema.classes]
    assert answer.column_names == ["prediction", *[f"probability_{c}" for c in classes]]
    assert answer["prediction"].to_pylist() == as_json["predictions"]
    for c in classes:
        assert answer[f"probability_{c}"].to_pylist() == [p[c] for p in as_json["probabilities"]]
    about = {k.decode(): v.decode() for k, v in (answer.schema.metadata or {}).items()}
    assert about["bitloop.model_name"] == churn_model.name
    assert about["bitloop.model_version"] == as_json["model_version"]
    assert about["bitloop.variant"] == "champion"
    assert len(about["bitloop.request_id"]) == 32

    # JSON in, Arrow out; compressed streams are read too.
    as_arrow = read(
        client.post("/predict/batch", json={"records": records}, headers={"accept": ARROW_STREAM})
    )
    assert as_arrow["prediction"].to_pylist() == as_json["predictions"]
    plain = pa.Table.from_pandas(frame_of(records), preserve_index=False)
    zstd = client.post("/predict/batch", content=stream(plain, compression="zstd"), headers=ARROW)
    assert zstd.status_code == 200, zstd.text
    assert zstd.json()["predictions"] == as_json["predictions"]
    lz4 = client.post("/predict/batch", content=stream(table, compression="lz4"), headers=ARROW)
    assert lz4.json()["predictions"] == as_json["predictions"]  # dictionary batches compressed too


def test_a_regression_model_answers_arrow_with_float_predictions(
    make_client: Client, diabetes_model: Trained
) -> None:
    client = make_client(diabetes_model.name)
    records = holdout_records(diabetes_model, 20)
    as_json = client.post("/predict/batch", json={"records": records}).json()
    body = stream(pa.Table.from_pandas(frame_of(records), preserve_index=False))
    answer = read(client.post("/predict/batch", content=body, headers={**ARROW, "accept": ARROW_STREAM}))
    assert answer.column_names == ["prediction"]
    assert answer.schema.field("prediction").type == pa.float64()
    assert answer["prediction"].to_pylist() == as_json["predictions"]


def test_an_arrow_batch_gets_422s_naming_the_field_and_row(client: TestClient, churn_model: Trained) -> None:
    records = holdout_records(churn_model, 5)
    numeric = next(f.name for f in churn_model.schema.features if f.kind == "numeric")
    required = next(f.name for f in churn_model.schema.features if not f.nullable)
    categorical = next(f.name for f in churn_model.schema.features if f.kind == "categorical")
    frame = frame_of(records)

    def post(table: pa.Table) -> list[dict[str, Any]]:
        return errors(client.post("/predict/batch", content=stream(table), headers=ARROW))

    texts = frame.astype({numeric: object})
    texts.loc[3, numeric] = "twelve"
    texts[numeric] = texts[numeric].astype(str)
    assert any(e["loc"] == ["body", "columns", numeric, 3] for e in post(pa.Table.from_pandas(texts)))
    unknown = frame.copy()
    unknown.loc[1, categorical] = "not-a-category"
    assert any(
        e["loc"][:4] == ["body", "columns", categorical, 1] for e in post(pa.Table.from_pandas(unknown))
    )
    holes = pa.Table.from_pandas(frame, preserve_index=False)
    index = holes.schema.get_field_index(required)
    column = holes[required].to_pylist()
    column[2] = None
    holes = holes.set_column(
        index, holes.schema.field(index), pa.array(column, holes.schema.field(index).type)
    )
    assert any(e["loc"][:4] == ["body", "columns", required, 2] for e in post(holes))
    extra = pa.Table.from_pandas(frame.assign(shoe_size=1), preserve_index=False)
    assert any(e["loc"][:3] == ["body", "columns", "shoe_size"] for e in post(extra))
    too_many = pa.Table.from_pandas(pd.concat([frame] * 300), preserve_index=False)  # 1,500 > 1,000 rows
    assert post(too_many) == [
        {
            "type": "arrow_invalid",
            "loc": ["body", "columns"],
            "msg": "the stream has 1500 rows: send between 1 and 1000",
        }
    ]
    empty = pa.Table.from_pandas(frame.head(0), preserve_index=False)
    assert post(empty)[0]["msg"] == "the stream has 0 rows: send between 1 and 1000"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"", "0 rows"),
        (b"not arrow at all", "not a readable Arrow IPC stream"),
        (stream(pa.table({"age": [1.0] * 50}))[:-30], "not a readable Arrow IPC stream"),
        (b"\xff\xff\xff\xff" + b"\x10\x00\x00\x00" + b"\xff" * 16, "not a readable Arrow IPC stream"),
        # 2 kB of zstd declaring 16 MB: refused from the sizes it declares, before decompression.
        (stream(pa.table({"age": [1.0] * 2_000_000}), compression="zstd"), "decodes to 16000000 bytes"),
        # 10^8 nulls take no bytes at all: refused by the row count it declares.
        (stream(pa.table({"age": pa.nulls(10**8)})), "has 100000000 rows"),
    ],
    ids=["empty", "garbage", "truncated", "bad-metadata", "zstd-bomb", "null-rows"],
)
def test_a_hostile_arrow_stream_is_a_422_and_the_server_keeps_serving(
    client: TestClient, churn_model: Trained, body: bytes, words: str
) -> None:
    start = time.perf_counter()
    found = errors(client.post("/predict/batch", content=body, headers=ARROW))
    assert time.perf_counter() - start < 2
    assert found[0]["type"] == "arrow_invalid"
    assert words in found[0]["msg"]
    records = holdout_records(churn_model, 3)
    assert client.post("/predict/batch", json={"records": records}).status_code == 200


def test_other_media_types_are_refused_naming_both_accepted(client: TestClient) -> None:
    answer = client.post("/predict/batch", content=b"a,b\n1,2", headers={"content-type": "text/csv"})
    assert answer.status_code == 415
    assert ARROW_STREAM in answer.json()["detail"]
    assert "application/json" in answer.json()["detail"]
    # One record is JSON only.
    assert client.post("/predict", content=b"", headers=ARROW).status_code == 415


VALID = stream(pa.table({"age": [1.0, None, 3.5] * 20, "plan": ["basic", None, "pro"] * 20}), chunk=25)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_a_corrupted_stream_is_read_or_refused_never_an_internal_error(flips: list[tuple[int, int]]) -> None:
    body = bytearray(VALID)
    for at, value in flips:
        body[at] = value
    kinds = []
    try:
        columns = read_columns(bytes(body), 1000, 2 * 1024 * 1024)
    except RequestValidationError as err:
        kinds = [e["type"] for e in err.errors()]
    else:
        assert all(len(values) <= 1000 for values in columns.values())
    assert set(kinds) <= {"arrow_invalid"}


@pytest.mark.parametrize(
    ("accept", "arrow"),
    [
        ("", False),
        ("*/*", False),
        ("application/json", False),
        (ARROW_STREAM, True),
        (f"{ARROW_STREAM}; charset=binary", True),
        (f"application/json, {ARROW_STREAM}", False),
        (f"{ARROW_STREAM}, application/json", True),
        (f"application/json;q=0.5, {ARROW_STREAM}", True),
        (f"{ARROW_STREAM};q=0, application/json;q=0.1", False),
        (f"{ARROW_STREAM};q=zero", False),
    ],
)
def test_the_accept_header_chooses_the_answer_format(accept: str, arrow: bool) -> None:
    assert wants_arrow(accept) is arrow
