"""The promotion gate: never promotes a candidate worse than the champion on the shared holdout."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.params import HIGHER_IS_BETTER
from pipeline.promote import decide

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


@given(metric=metrics, candidate=values, champion=values, margin=margins)
def test_promotes_when_better_by_the_margin(
    metric: str, candidate: float, champion: float, margin: float
) -> None:
    gain = candidate - champion if HIGHER_IS_BETTER[metric] else champion - candidate
    decision = decide({metric: candidate}, {metric: champion}, metric, margin, floors={})
    assert decision.promote == (gain >= margin and gain > 0)
    assert decision.champion == champion
    assert decision.candidate == candidate


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


@given(candidate=values, champion=values)
def test_floors_bind_even_when_the_champion_is_worse(candidate: float, champion: float) -> None:
    decision = decide({"roc_auc": 0.55, "r2": candidate}, {"roc_auc": 0.1}, "roc_auc", 0.0, {"roc_auc": 0.6})
    assert not decision.promote


def test_nan_candidate_never_passes_a_floor() -> None:
    assert not decide({"rmse": float("nan")}, None, "rmse", 0.0, {"rmse": 10.0}).promote
