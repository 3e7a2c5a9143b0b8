"""The promotion gate: never promotes a candidate worse than the champion on the shared holdout."""

from __future__ import annotations

import pandas as pd
from hypothesis import assume, given
from hypothesis import strategies as st

from core.params import HIGHER_IS_BETTER
from core.schema import BATCH_COLUMN
from pipeline.stages.promote import decide, recent_holdout

metrics = st.sampled_from(sorted(HIGHER_IS_BETTER))
values = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)
margins = st.floats(min_value=0.0, max_value=1.0)


def better(metric: str, a: float, b: float) -> bool:
    return a > b if HIGHER_IS_BETTER[metric] else a < b


@given(metric=metrics, candidate=values, champion=values, margin=margins)
def test_never_promotes_a_candidate_that_is_not_better(
    metric: str, candidate: float, champion: float, margin: float
) -> None:
    decision = decide({metric: candidate}, {metric: champion}, metric, margin, floors={})
    if not better(metric, candidate, champion):
        assert not decision.promote
    if decision.promote:
        assert abs(candidate - champion) >= margin


def shifted(metric: str, value: float, by: float) -> float:
    """`value` made better (by > 0) or worse (by < 0) on `metric` by `by`."""
    return value + by if HIGHER_IS_BETTER[metric] else value - by


@given(metric=metrics, champion=values, margin=margins, extra=st.floats(min_value=1e-6, max_value=10.0))
def test_promotes_a_candidate_better_than_the_margin(
    metric: str, champion: float, margin: float, extra: float
) -> None:
    candidate = shifted(metric, champion, margin + extra)
    decision = decide({metric: candidate}, {metric: champion}, metric, margin, floors={})
    assert decision.promote
    assert (decision.candidate, decision.champion) == (candidate, champion)


@given(metric=metrics, candidate=values, champion=values, margin=margins, better_by=values, less=margins)
def test_a_better_candidate_or_a_smaller_margin_never_reverses_a_promotion(
    metric: str, candidate: float, champion: float, margin: float, better_by: float, less: float
) -> None:
    assume(decide({metric: candidate}, {metric: champion}, metric, margin, floors={}).promote)
    stronger = shifted(metric, candidate, better_by)
    assert decide({metric: stronger}, {metric: champion}, metric, margin, floors={}).promote
    assert decide({metric: candidate}, {metric: champion}, metric, margin * less, floors={}).promote


@given(metric=metrics, a=values, b=values, margin=margins)
def test_two_models_never_both_beat_each_other(metric: str, a: float, b: float, margin: float) -> None:
    forward = decide({metric: a}, {metric: b}, metric, margin, floors={}).promote
    backward = decide({metric: b}, {metric: a}, metric, margin, floors={}).promote
    assert not (forward and backward)


@given(metric=metrics, candidate=values, floor=values)
def test_without_a_champion_promotes_exactly_when_the_floors_pass(
    metric: str, candidate: float, floor: float
) -> None:
    decision = decide({metric: candidate}, None, metric, 0.0, floors={metric: floor})
    passes = candidate >= floor if HIGHER_IS_BETTER[metric] else candidate <= floor
    assert decision.promote == passes
    if not passes:
        assert metric in decision.reason
        assert "floor" in decision.reason


@given(candidate=st.floats(0.0, 0.59), champion=st.floats(0.0, 1.0))
def test_floors_bind_even_when_the_champion_is_worse(candidate: float, champion: float) -> None:
    decision = decide({"roc_auc": candidate}, {"roc_auc": champion}, "roc_auc", 0.0, {"roc_auc": 0.6})
    assert not decision.promote
    assert "below the floors" in decision.reason


def test_nan_candidate_never_passes_a_floor() -> None:
    assert not decide({"rmse": float("nan")}, None, "rmse", 0.0, {"rmse": 10.0}).promote


@given(st.lists(st.integers(1, 400), min_size=1, max_size=8), st.integers(1, 2000) | st.none())
def test_the_rows_compared_are_whole_batches_newest_first_until_enough(
    sizes: list[int], wanted: int | None
) -> None:
    test = pd.DataFrame({BATCH_COLUMN: [b for b, n in enumerate(sizes) for _ in range(n)], "x": 0.0})
    recent, described = recent_holdout(test, wanted)
    taken = sorted(set(recent[BATCH_COLUMN]))
    assert taken == list(range(len(sizes)))[len(sizes) - len(taken) :]  # a run of the newest batches
    assert len(recent) == sum(sizes[b] for b in taken)  # whole batches
    if wanted is None or len(recent) == len(test):
        assert described == f"the whole holdout ({len(test)} rows)"
    else:
        assert len(recent) >= wanted  # enough rows...
        assert len(recent) - sizes[taken[0]] < wanted  # ...and no batch more than needed
        assert f"({len(recent)} of {len(test)} rows)" in described
