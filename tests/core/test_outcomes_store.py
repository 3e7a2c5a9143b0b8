"""True outcomes in the prediction log, on SQLite and a real PostgreSQL: addressed by request and
row or by entity id, stored once per prediction, expired with retention; a log written before
outcomes existed is migrated with its rows intact."""

from __future__ import annotations

import sqlite3
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.predictions.access import insert_rows, read_features, read_rows, read_unlabelled
from core.predictions.backends import open_store
from core.predictions.rows import Row
from core.predictions.tables import MIGRATIONS


def batch(
    request_id: str,
    n: int,
    ts: float,
    *,
    variant: str = "champion",
    ids: list[str] | None = None,
    model: str = "m",
) -> list[Row]:
    entities: list[str | None] = list(ids) if ids else [None] * n
    probabilities = {"no": 0.4, "yes": 0.6}
    return [
        Row(ts, request_id, model, "1", variant, {"x": float(i)}, "yes", probabilities, i, entities[i])
        for i in range(n)
    ]


def test_outcomes_are_addressed_and_stored_once_on_both_stores(log_url: str) -> None:
    now = time.time()
    insert_rows(log_url, batch("a", 3, now - 30, ids=["c1", "c2", "c3"]))
    insert_rows(log_url, batch("a", 3, now - 30, variant="shadow", ids=["c1", "c2", "c3"]))
    insert_rows(log_url, batch("b", 1, now - 10, ids=["c2"]))  # c2 scored again, later
    store = open_store(log_url)
    try:
        assert store.resolve("m", "a", 2, None) == ("a", 2)
        assert store.resolve("m", "a", 3, None) is None  # no such row
        assert store.resolve("m", None, 0, "c2") == ("b", 0)  # the newest prediction for the entity
        assert store.resolve("m", None, 0, "c9") is None
        insert_rows(log_url, batch("s", 1, now, variant="shadow", ids=["c7"]))
        assert store.resolve("m", None, 0, "c7") is None  # a shadow row answered nobody
        assert store.add_outcome("a", 2, "no", now) == "recorded"
        assert store.add_outcome("a", 2, "no", now + 1) == "duplicate"
        assert store.add_outcome("a", 2, "yes", now + 2) == "conflict"
        assert store.add_outcome("b", 0, 1.5, now - 5000) == "recorded"
        store.commit()
        assert store.outcomes() == [("b", 0, 1.5, now - 5000), ("a", 2, "no", now)]
        store.expire(now - 1000, 100)  # retention takes outcomes received before the cutoff
        assert store.outcomes() == [("a", 2, "no", now)]
    finally:
        store.close()
    assert [(r.row_index, r.entity_id) for r in read_rows(log_url)[:3]] == [(0, "c1"), (1, "c2"), (2, "c3")]


def test_an_outcome_is_for_the_model_it_was_sent_to_on_both_stores(log_url: str) -> None:
    """Two models scored the same customer: each one's outcome finds its own prediction, by entity
    id or by request, never the other model's (even the newer one)."""
    now = time.time()
    insert_rows(log_url, batch("churn-req", 1, now - 20, ids=["c1"], model="churn"))
    insert_rows(log_url, batch("fraud-req", 1, now - 10, ids=["c1"], model="fraud"))
    store = open_store(log_url)
    try:
        assert store.resolve("churn", None, 0, "c1") == ("churn-req", 0)
        assert store.resolve("fraud", None, 0, "c1") == ("fraud-req", 0)
        assert store.resolve("churn", "fraud-req", 0, None) is None
        assert store.resolve("other", None, 0, "c1") is None
    finally:
        store.close()


@pytest.mark.parametrize("variant", ["champion", "canary", "challenger"])
def test_every_variant_that_answered_gets_its_outcome_and_counts_as_traffic(
    log_url: str, variant: str
) -> None:
    """A canary's answers are answers: their outcomes resolve by request and row and by entity id, the
    ground-truth collector asks for them, and the drift window reads their inputs. Only a shadow row,
    which repeats inputs another variant logged, is left out of all three."""
    now = time.time()
    insert_rows(log_url, batch(f"req-{variant}", 2, now - 20, variant=variant, ids=["e0", "e1"]))
    insert_rows(log_url, batch("shadowed", 1, now - 10, variant="shadow", ids=["e9"]))
    store = open_store(log_url)
    try:
        assert store.resolve("m", f"req-{variant}", 1, None) == (f"req-{variant}", 1)
        assert store.resolve("m", None, 0, "e0") == (f"req-{variant}", 0)
        assert store.resolve("m", "shadowed", 0, None) is None
        assert store.resolve("m", None, 0, "e9") is None
    finally:
        store.close()
    assert sorted(read_unlabelled(log_url, "m", since=now - 60)) == ["e0", "e1"]
    assert len(read_features(log_url, "m", since=now - 60)) == 2


sends = st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["no", "yes"])), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(sends)
def test_an_outcome_is_stored_once_however_often_it_is_sent(sent: list[tuple[int, str]]) -> None:
    """Rows 0-3 of request "r" exist, 4 and 5 do not: the first outcome sent for a row stays."""
    with tempfile.TemporaryDirectory() as scratch:
        url = str(Path(scratch) / "log.sqlite")
        insert_rows(url, batch("r", 4, time.time()))
        store = open_store(url)
        try:
            statuses = []
            for row, outcome in sent:
                found = store.resolve("m", "r", row, None)
                statuses.append("unknown" if found is None else store.add_outcome(*found, outcome, 0.0))
            store.commit()
            stored = {row: outcome for _, row, outcome, _ in store.outcomes()}
        finally:
            store.close()
    first: dict[int, str] = {}
    for row, outcome in sent:
        first.setdefault(row, outcome)
    assert stored == {row: outcome for row, outcome in first.items() if row < 4}
    expected = []
    seen: set[int] = set()
    for row, outcome in sent:
        if row >= 4:
            expected.append("unknown")
        elif row not in seen:
            expected.append("recorded")
        else:
            expected.append("duplicate" if outcome == first[row] else "conflict")
        seen.add(row)
    assert statuses == expected
    assert statuses.count("recorded") == len(stored)


def test_a_log_written_before_outcomes_is_migrated_with_its_rows(tmp_path: Path) -> None:
    url = tmp_path / "old.sqlite"
    conn = sqlite3.connect(url)
    conn.execute(
        "CREATE TABLE bitloop_schema (version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
        "applied_at DOUBLE PRECISION NOT NULL)"
    )
    for migration in MIGRATIONS[:2]:
        for statement in migration.sqlite:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO bitloop_schema VALUES (?, ?, ?)", (migration.version, migration.description, 0)
        )
    conn.execute(
        "INSERT INTO predictions (ts, request_id, model_name, model_version, variant, features, prediction, "
        "probabilities) VALUES (1.0, 'old', 'm', '1', 'champion', '{\"x\": 1.0}', '\"yes\"', NULL)"
    )
    conn.commit()
    conn.close()
    store = open_store(url)
    try:
        assert store.resolve("m", "old", 0, None) == ("old", 0)
        assert store.add_outcome("old", 0, "no", 2.0) == "recorded"
        store.commit()
    finally:
        store.close()
    (old,) = read_rows(url)
    assert (old.request_id, old.row_index, old.entity_id, old.features) == ("old", 0, None, {"x": 1.0})
