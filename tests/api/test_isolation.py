"""A record the model cannot score fails alone: bisection in ServedModel.score and the micro-batcher."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pandas as pd
import pytest

from api.batching import MicroBatcher
from api.model import ModelLoadError, ServedModel, UnscorableRecord
from api.schemas import build_batch_model, build_record_model
from core.profile import FeatureProfile, ReferenceProfile
from core.schema import DatasetSchema, FeatureSpec

SCHEMA = DatasetSchema(
    task="classification",
    target="y",
    id_column=None,
    features=(
        FeatureSpec(name="x", kind="numeric"),
        FeatureSpec(name="colour", kind="categorical", categories=("red", "blue")),
    ),
    classes=(0, 1),
)
PROFILE = ReferenceProfile(
    rows=3,
    features={
        "x": FeatureProfile(kind="numeric", missing_rate=0.0, sample=[1.0, 2.0, 3.0]),
        "colour": FeatureProfile(kind="categorical", missing_rate=0.0, frequencies={"red": 0.7, "blue": 0.3}),
    },
)


class Estimator:
    """predict_proba that raises on x above `poison_above` (or on everything when `broken`)."""

    classes_ = np.array([0, 1])

    def __init__(self, poison_above: float = 100.0, broken: bool = False) -> None:
        self.poison_above, self.broken = poison_above, broken
        self.calls: list[int] = []

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        self.calls.append(len(x))
        if self.broken or (x["x"] > self.poison_above).any():
            raise ValueError("Input contains infinity or a value too large for dtype('float32')")
        p = 1 / (1 + np.exp(-x["x"].fillna(0).to_numpy()))
        return np.column_stack([1 - p, p])


def served(estimator: Any) -> ServedModel:
    record = build_record_model(SCHEMA, closed_categories=True)
    return ServedModel(
        name="m",
        version="1",
        run_id=None,
        estimator=estimator,
        schema=SCHEMA,
        metrics={},
        data_version=None,
        record_model=record,
        batch_model=build_batch_model(record, 100),
        profile=PROFILE,
    )


def good(x: float) -> dict[str, Any]:
    return {"x": x, "colour": "red"}


def test_one_bad_record_fails_alone_and_is_named_by_field() -> None:
    estimator = Estimator()
    model = served(estimator)
    records = [good(i) for i in range(31)] + [good(1e6)]
    outcomes = model.score(records)
    assert [isinstance(o, Exception) for o in outcomes] == [False] * 31 + [True]
    bad = outcomes[-1]
    assert isinstance(bad, UnscorableRecord)
    assert bad.field == "x"
    clean, _ = model.predict(records[:31])
    assert [o[0] for o in outcomes[:31]] == clean  # type: ignore[index]
    share, scored = model.faults.ratio()
    assert (share, scored) == (0.0, 32)  # the input's fault is not the model's


def test_a_model_that_fails_on_everything_is_a_server_fault() -> None:
    model = served(Estimator(broken=True))
    outcomes = model.score([good(1.0), good(2.0)])
    assert all(isinstance(o, ValueError) and not isinstance(o, UnscorableRecord) for o in outcomes)
    assert model.faults.ratio() == (1.0, 2)


def test_the_stored_sample_must_score_before_a_version_serves() -> None:
    served(Estimator()).check(pd.DataFrame({"x": [1.0, 2.0], "colour": ["red", "blue"]}))
    with pytest.raises(ModelLoadError) as refused:
        served(Estimator(broken=True)).check(None)
    assert refused.value.public == "it cannot predict its own input example and reference sample"
    with pytest.raises(ModelLoadError):  # the input example holds a value this model fails on
        served(Estimator(poison_above=1.5)).check(pd.DataFrame({"x": [1.0, 2.0], "colour": ["red", "red"]}))

    class Relabelled(Estimator):
        classes_ = np.array(["no", "yes"])

    with pytest.raises(ModelLoadError, match="classes"):
        served(Relabelled()).check(None)


def test_non_finite_answers_are_failures_not_answers() -> None:
    class Nan(Estimator):
        def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
            out = super().predict_proba(x)
            out[x["x"].to_numpy() == 7.0] = np.nan
            return out

    outcomes = served(Nan()).score([good(1.0), good(7.0), good(2.0)])
    assert [type(o).__name__ for o in outcomes] == ["tuple", "UnscorableRecord", "tuple"]


def test_the_micro_batcher_shares_one_call_and_isolates_the_poison() -> None:
    estimator = Estimator()
    model = served(estimator)

    async def run() -> list[Any]:
        batcher = MicroBatcher(threads=1, max_size=64, max_wait_ms=20)
        batcher.start()
        try:
            # The first call occupies the only slot; the rest queue and form one batch.
            records = [good(float(i % 5)) for i in range(40)]
            records[17] = good(5e30)
            return await asyncio.gather(
                *(batcher.submit(model, "champion", r) for r in records), return_exceptions=True
            )
        finally:
            await batcher.stop()

    results = asyncio.run(run())
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert failed == [17]
    assert isinstance(results[17], UnscorableRecord)
    assert results[17].field == "x"
    assert estimator.calls[0] == 40  # all forty shared one model call
    assert len(estimator.calls) < 20  # bisection costs a few calls, not one per record


def test_a_refused_record_sent_again_is_answered_without_a_model_call() -> None:
    """The first time its batch is bisected and it is diagnosed (a dozen calls); for a minute after,
    the same record is refused at once and its batch takes one call, while another value is still
    diagnosed afresh, and a new version forgets."""
    estimator = Estimator()
    model = served(estimator)
    batch = [good(i) for i in range(31)] + [good(1e6)]
    first = model.score(batch)
    first_calls = len(estimator.calls)
    assert first_calls > 5
    estimator.calls.clear()
    again = model.score(batch)
    assert estimator.calls == [31]  # one call for the valid records, none for the poison
    assert isinstance(again[-1], UnscorableRecord)
    assert again[-1].field == "x"
    assert again[-1] is not first[-1]  # each answer its own exception
    assert [o[0] for o in again[:31]] == [o[0] for o in first[:31]]  # type: ignore[index]
    assert model.faults.ratios()[1] == 2 / 64  # still counted as refused, each time
    estimator.calls.clear()
    model.score([good(1e7)])
    assert len(estimator.calls) > 1  # another value: diagnosed
    estimator.calls.clear()
    served(estimator).score([good(1e6)])
    assert len(estimator.calls) > 1  # another version: no memory of it
