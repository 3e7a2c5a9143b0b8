"""Nothing a client sends can stop the prediction log: every client-controlled string is stored and
read back exactly on SQLite and PostgreSQL, or refused with a 4xx naming the field; a row the store
refuses anyway is quarantined with its reason while every other row is written, also when it was
spilled to disk and adopted by the next writer."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from api.arrow import ARROW_STREAM
from api.predlog import PredictionLog
from core.predictions.access import count_rows, read_rows
from core.predictions.backends import open_store
from core.predictions.rows import Row
from tests.api.conftest import Trained, holdout_records
from tests.api.traffic import wait_for

pytestmark = pytest.mark.integration
Client = Callable[..., TestClient]

# Every code point, lone surrogates and NUL included, up to past the 200-character limit.
TEXT = st.text(st.characters(blacklist_categories=()), min_size=1, max_size=210)


def clean(text: str) -> bool:
    """What every store keeps exactly: no NUL, no lone surrogate."""
    return "\x00" not in text and not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def keeps(text: str) -> bool:
    """An id or a category value the server logs: 1 to 200 characters every store keeps."""
    return 1 <= len(text) <= 200 and clean(text)


def names(answer: Any, loc: list[Any], text: str) -> bool:
    """Whether a 422 names the field at `loc` (or inside it). A lone surrogate's escape makes a JSON
    body unreadable to the server's parser: that 422 names the body."""
    locs = [e["loc"] for e in answer.json()["detail"]]
    surrogate = any(0xD800 <= ord(c) <= 0xDFFF for c in text)
    return any(found[: len(loc)] == loc for found in locs) or (
        surrogate and loc[0] == "body" and ["body"] in locs
    )


def escaped(body: dict[str, Any]) -> bytes:
    """A JSON body as a client sends it: NUL and lone surrogates as \\u escapes."""
    return json.dumps(body, ensure_ascii=True).encode()


@pytest.fixture
def client(make_client: Client, churn_model: Trained, log_url: str) -> TestClient:
    # Open categories: a client's category value is logged as it was sent.
    return make_client(
        churn_model.name, prediction_log_url=log_url, closed_categories=False, prediction_log_flush_ms=5.0
    )


def newest(log_url: str, count: int) -> list[Row]:
    wait_for(lambda: count_rows(log_url) >= count, 10)
    return read_rows(log_url)[-1:]


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
@example(text="nul\x00byte")
@example(text="\ud800")
@example(text="x" * 200)
@example(text="x" * 201)
@example(text="émoji 🐍 and 中文, quotes \" ' \\ and a newline\n")
def test_every_client_string_is_stored_exactly_or_refused_naming_its_field(
    client: TestClient, churn_model: Trained, log_url: str, text: str
) -> None:
    record = holdout_records(churn_model, 1)[0]
    category = next(f.name for f in churn_model.schema.features if f.kind == "categorical")
    headers = {"content-type": "application/json"}
    written = count_rows(log_url)

    def check(answer: Any, loc: list[Any], read: Callable[[Row], Any]) -> None:
        nonlocal written
        if keeps(text):
            assert answer.status_code == 200, (loc, answer.text)
            written += 1
            (row,) = newest(log_url, written)
            assert read(row) == text, loc
        else:
            assert answer.status_code == 422, (loc, answer.text)
            assert names(answer, loc, text), answer.text

    # The entity id in the query: a URL carries UTF-8 only, so a lone surrogate never reaches a server.
    if not any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        answer = client.post(f"/predict?id={quote(text, safe='')}", content=escaped(record), headers=headers)
        check(answer, ["query", "id"], lambda row: row.entity_id)
    answer = client.post(
        "/predict/batch", content=escaped({"records": [record], "ids": [text]}), headers=headers
    )
    check(answer, ["body", "ids", 0], lambda row: row.entity_id)
    answer = client.post("/predict", content=escaped({**record, category: text}), headers=headers)
    check(answer, ["body", category], lambda row: row.features[category])

    if not any(0xD800 <= ord(c) <= 0xDFFF for c in text):  # Arrow strings are UTF-8 too
        table = pa.Table.from_pylist([{**record, "customer": text}])
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        answer = client.post(
            "/predict/batch?id_column=customer",
            content=sink.getvalue(),
            headers={"content-type": ARROW_STREAM},
        )
        check(answer, ["body", "columns", "customer", 0], lambda row: row.entity_id)

    inputs = [
        {
            "name": f.name,
            "shape": [1],
            "datatype": "FP64" if f.kind == "numeric" else "BYTES",
            "data": [record[f.name]],
        }
        for f in churn_model.schema.features
    ]
    answer = client.post(
        f"/v2/models/{churn_model.name}/infer",
        content=escaped({"inputs": inputs, "parameters": {"ids": [text]}}),
        headers=headers,
    )
    if keeps(text):
        assert answer.status_code == 200, answer.text
        written += 1
        assert newest(log_url, written)[0].entity_id == text
    else:
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error.startswith("parameter 'ids', row 0") or (not clean(text) and "Invalid JSON" in error), (
            error
        )

    # Outcomes: addressed by the client's id (the predictions above logged it) or a request id (unknown
    # ones are reported per item), and the outcome itself, which a classifier takes only as a class.
    for field, value, kept in (("id", text, keeps(text)), ("request_id", text[:64], clean(text[:64]))):
        item, loc = {field: value, "outcome": 1}, ["body", "outcomes", 0, field]
        answer = client.post("/feedback", content=escaped({"outcomes": [item]}), headers=headers)
        if kept:
            assert answer.status_code == 200, (item, answer.text)
            counts = answer.json()
            assert counts["recorded"] + counts["duplicate"] + counts["conflict"] + counts["unknown"] == 1
        else:
            assert answer.status_code == 422, (item, answer.text)
            assert names(answer, loc, value), answer.text
    answer = client.post(
        "/feedback", content=escaped({"outcomes": [{"id": "nobody", "outcome": text}]}), headers=headers
    )
    if clean(text):  # reported unknown (no such id), or refused as no class of the model's
        assert answer.status_code in (200, 422), answer.text
    else:  # refused for the character, whatever the address
        assert answer.status_code == 422, answer.text
        assert names(answer, ["body", "outcomes", 0, "outcome"], text), answer.text
        assert any(word in answer.text for word in ("NUL", "surrogate", "Invalid JSON")), answer.text


POISON = "nul\x00byte"


def poisoned(count: int, ts: float) -> list[Row]:
    """`count` rows, one in the middle holding a NUL in its entity id and one in a feature value."""
    rows = [Row(ts, f"r{i}", "m", "1", "champion", {"x": float(i)}, 0, {"0": 1.0}) for i in range(count)]
    rows[count // 3] = rows[count // 3]._replace(entity_id=POISON)
    rows[2 * count // 3] = rows[2 * count // 3]._replace(features={"x": 1.0, "plan": POISON})
    return rows


def test_on_postgresql_a_nul_row_is_quarantined_and_every_other_row_is_written(postgres_log_url: str) -> None:
    """PostgreSQL refuses NUL in text and in JSONB: before, one such row stopped every write after it."""
    log = PredictionLog(postgres_log_url, flush_rows=64, flush_ms=10)
    log.append(poisoned(300, time.time()))
    log.append(poisoned(30, time.time())[:5])  # after the poison: written too
    wait_for(lambda: log.status().pending_rows == 0, 30)
    status = log.close()
    assert (status.error, status.dropped_rows, status.quarantined_rows) == (None, 0, 2)
    assert count_rows(postgres_log_url) == 303
    store = open_store(postgres_log_url)
    try:
        kept = store.quarantined()
    finally:
        store.close()
    assert [row["request_id"] for _, _, row in kept] == ["r100", "r200"]
    assert kept[0][2]["entity_id"] == POISON  # exactly the row, NUL and all
    assert kept[1][2]["features"]["plan"] == POISON
    assert all("NUL" in reason or "0x00" in reason or "\\u0000" in reason for _, reason, _ in kept), kept


def test_a_spilled_segment_holding_a_poison_row_is_written_around_it_by_the_next_writer(
    tmp_path: Path, postgres_log_url: str
) -> None:
    """The writer that spilled it could not reach the table (a lock held past its wait) and stopped;
    the next one adopts the segment, quarantines the poison row and writes the rest."""
    import psycopg2

    spill = tmp_path / "spill"
    open_store(postgres_log_url).close()  # the table exists
    holder = psycopg2.connect(postgres_log_url)
    holder.cursor().execute("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE")
    log = PredictionLog(postgres_log_url, flush_rows=64, flush_ms=10, spill_dir=spill)
    log.append(poisoned(90, time.time()))
    closed = log.close(timeout=1.0)
    assert (closed.pending_rows, closed.dropped_rows) == (90, 0)
    holder.rollback()
    holder.close()
    time.sleep(6)  # past the first writer's lock wait: it must not write them after all
    assert count_rows(postgres_log_url) == 0
    successor = PredictionLog(postgres_log_url, spill_dir=spill)
    wait_for(lambda: count_rows(postgres_log_url) == 88, 30)
    status = successor.close()
    assert (status.quarantined_rows, status.dropped_rows, status.error) == (2, 0, None)
    assert list(spill.iterdir()) == []


def test_a_lone_surrogate_that_reaches_the_writer_is_quarantined_on_sqlite(tmp_path: Path) -> None:
    """The door refuses it; should one come from elsewhere (a server-side value), SQLite refuses to
    encode it and the writer quarantines it like PostgreSQL's NUL."""
    path = tmp_path / "p.sqlite"
    log = PredictionLog(path, flush_rows=64, flush_ms=10)
    rows = [Row(time.time(), f"r{i}", "m", "1", "champion", {"x": float(i)}, 0, None) for i in range(50)]
    rows[7] = rows[7]._replace(entity_id="\udc80")
    log.append(rows)
    wait_for(lambda: log.status().pending_rows == 0, 30)
    assert log.close().quarantined_rows == 1
    assert [r.request_id for r in read_rows(path)] == [f"r{i}" for i in range(50) if i != 7]
