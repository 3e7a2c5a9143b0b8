"""Live customers and their late outcomes from the data-source service: each outcome is the
simulator's label for the customer's draw, released only after the world's delay, never for an id
the world did not hand out."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.data.sources.live import MAX_ROWS, Draw, parse, release
from pipeline.data.sources.service import MAX_OUTCOME_IDS, create_app
from pipeline.data.sources.simulated import ID_COLUMN, TARGET, simulate_churn


@pytest.fixture
def source() -> TestClient:
    return TestClient(create_app(outcome_delay_seconds=0.0))


def customers(client: TestClient, n: int, seed: int) -> pd.DataFrame:
    answer = client.get("/customers", params={"n": n, "seed": seed})
    assert answer.status_code == 200, answer.text
    return pd.read_csv(io.StringIO(answer.text))


def outcomes(client: TestClient, ids: list[str]) -> dict[str, object]:
    answer = client.post("/outcomes", json={"ids": ids})
    assert answer.status_code == 200, answer.text
    body: dict[str, object] = answer.json()
    return body


def test_customers_come_without_labels_and_their_outcomes_are_the_simulators(source: TestClient) -> None:
    frame = customers(source, 300, 5)
    assert TARGET not in frame
    assert frame[ID_COLUMN].is_unique
    truth = simulate_churn(300, 5)
    features = [c for c in truth if c not in (ID_COLUMN, TARGET)]
    pd.testing.assert_frame_equal(frame[features], truth[features], check_dtype=False)
    found = outcomes(source, frame[ID_COLUMN].tolist())
    assert found["pending"] == []
    assert found["unknown"] == []
    assert [o["outcome"] for o in found["outcomes"]] == truth[TARGET].tolist()  # type: ignore[attr-defined]


def test_outcomes_follow_the_concept_the_world_had_when_the_customer_came(source: TestClient) -> None:
    before = customers(source, 2000, 8)[ID_COLUMN].tolist()
    assert source.put("/world", json={"concept": 1.0}).json()["concept"] == 1.0
    after = customers(source, 2000, 8)[ID_COLUMN].tolist()
    churn_before = [o["outcome"] for o in outcomes(source, before)["outcomes"]]  # type: ignore[attr-defined]
    churn_after = [o["outcome"] for o in outcomes(source, after)["outcomes"]]  # type: ignore[attr-defined]
    assert churn_before == simulate_churn(2000, 8)[TARGET].tolist()
    assert churn_after == simulate_churn(2000, 8, 0.0, concept=1.0)[TARGET].tolist()
    assert sum(churn_after) > sum(churn_before) * 1.2  # the same customers, more sensitive now


def test_an_outcome_is_released_only_after_the_delay() -> None:
    client = TestClient(create_app(outcome_delay_seconds=0.8))
    ids = customers(client, 5, 1)[ID_COLUMN].tolist()
    early = outcomes(client, ids)
    assert (early["outcomes"], early["pending"]) == ([], ids)
    time.sleep(1.0)
    late = outcomes(client, ids)
    assert [o["id"] for o in late["outcomes"]] == ids  # type: ignore[attr-defined]
    assert late["pending"] == []


def test_ids_the_world_never_handed_out_are_unknown(source: TestClient) -> None:
    real = customers(source, 3, 2)[ID_COLUMN].tolist()
    origin, _ = parse(real[0]) or (None, 0)
    assert origin is not None
    forged = [
        "C0000000000000001",  # a training batch's id
        origin.customer_id(3),  # past the end of its draw
        Draw(origin.released_ms, MAX_ROWS + 1, 0, 0, 0).customer_id(0),
        Draw(origin.released_ms, 3, 2, 1_000_001, 0).customer_id(0),  # drift above 1
        real[0] + "0",
    ]
    found = outcomes(source, [*forged, real[1]])
    assert found["unknown"] == forged
    assert [o["id"] for o in found["outcomes"]] == [real[1]]  # type: ignore[attr-defined]


def test_bad_requests_name_the_field(source: TestClient) -> None:
    too_many = source.post("/outcomes", json={"ids": ["x"] * (MAX_OUTCOME_IDS + 1)})
    assert too_many.status_code == 422
    assert too_many.json()["detail"][0]["loc"] == ["body", "ids"]
    assert source.post("/outcomes", json={"ids": []}).status_code == 422
    bad = source.get("/customers", params={"n": 0})
    assert (bad.status_code, bad.json()["detail"][0]["loc"]) == (422, ["query", "n"])
    world = source.put("/world", json={"outcome_delay_seconds": -1})
    assert (world.status_code, world.json()["detail"][0]["loc"]) == (422, ["body", "outcome_delay_seconds"])


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 2**52),
    st.integers(1, MAX_ROWS),
    st.integers(0, 2**63 - 1),
    st.integers(0, 1_000_000),
    st.integers(0, 1_000_000),
    st.data(),
)
def test_an_id_names_its_draw_and_row(
    issued: int, n: int, seed: int, drift: int, concept: int, data: st.DataObject
) -> None:
    origin = Draw(issued, n, seed, drift, concept)
    row = data.draw(st.integers(0, n - 1))
    assert parse(origin.customer_id(row)) == (origin, row)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_text_is_an_unknown_id_or_a_draw(text: str) -> None:
    found = release([text], time.time())
    assert len(found.outcomes) + len(found.pending) + len(found.unknown) == 1


def test_the_world_survives_a_restart_and_a_change_it_cannot_save_is_refused(tmp_path: Path) -> None:
    """`make down && make up` restarts the data source: the world it had (drift, concept, delay) is
    the one the registry's champion was trained on, so it must come back, not reset to drift 0."""
    saved = tmp_path / "state" / "world.json"
    first = TestClient(create_app(world_file=saved))
    assert first.get("/world").json()["drift"] == 0.0  # a new world takes the flags' levels
    changed = first.put("/world", json={"drift": 0.7, "concept": 0.2, "outcome_delay_seconds": 5})
    assert changed.status_code == 200, changed.text
    again = TestClient(create_app(drift=0.0, outcome_delay_seconds=60.0, world_file=saved))
    assert again.get("/world").json() == {"drift": 0.7, "concept": 0.2, "outcome_delay_seconds": 5.0}
    # A world that cannot be kept is not changed: a 503 naming the file, and the old world stays.
    # (A file where its directory should be: permission bits would not stop root.)
    (tmp_path / "blocked").write_text("a file, not a directory")
    stuck = TestClient(create_app(drift=0.3, world_file=tmp_path / "blocked" / "world.json"))
    refused = stuck.put("/world", json={"drift": 1.0})
    assert refused.status_code == 503
    assert "blocked/world.json cannot be written" in refused.json()["detail"]
    assert stuck.get("/world").json()["drift"] == 0.3
