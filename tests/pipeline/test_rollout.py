"""The rollout's judgement and split, as pure functions: properties, not the formulas restated."""

from __future__ import annotations

import random

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pipeline.decider import MIN_SHIFT_ROWS, Evidence, Side, judge, prediction_shift
from pipeline.params import RolloutSlo
from pipeline.predictions import LoggedPrediction
from pipeline.rollout import in_canary

SLO = RolloutSlo(max_error_ratio_increase=0.01, max_latency_ratio=2.0, max_psi=0.2, max_quality_drop=0.02)
MIN_REQUESTS, MAX_MINUTES, MIN_LABELLED = 500, 60.0, 100


def twin(records: float, **canary: float | None) -> Evidence:
    """A canary that behaves like the stable version, with `canary`'s figures changed."""
    stable = Side(
        records=records * 9, failures=records * 9 * 0.002, p95_seconds=0.004, quality=0.85, labelled=400
    )
    same = {"records": records, "failures": records * 0.002, "p95_seconds": 0.004, "quality": 0.85}
    return Evidence(
        canary=Side(**{**same, **canary}, labelled=400),  # type: ignore[arg-type]
        stable=stable,
        psi=0.01,
        elapsed_seconds=120.0,
        metric="roc_auc",
    )


def decide(evidence: Evidence) -> str:
    return judge(evidence, SLO, MIN_REQUESTS, MAX_MINUTES, MIN_LABELLED).action


def test_a_canary_like_the_stable_version_is_promoted_once_it_has_enough_records() -> None:
    assert decide(twin(MIN_REQUESTS - 1)) == "wait"
    verdict = judge(twin(MIN_REQUESTS), SLO, MIN_REQUESTS, MAX_MINUTES, MIN_LABELLED)
    assert verdict.action == "promote"
    assert {c.slo: c.status for c in verdict.checks} == dict.fromkeys(
        ("errors", "latency", "predictions", "quality"), "pass"
    )


@pytest.mark.parametrize(
    ("change", "slo"),
    [
        ({"failures": 30.0}, "errors"),
        ({"p95_seconds": 0.04}, "latency"),
        ({"quality": 0.80}, "quality"),
    ],
)
def test_a_canary_past_one_slo_is_rolled_back_and_the_reason_names_it(
    change: dict[str, float], slo: str
) -> None:
    verdict = judge(twin(1000, **change), SLO, MIN_REQUESTS, MAX_MINUTES, MIN_LABELLED)
    assert verdict.action == "rollback"
    assert verdict.reason.startswith(f"{slo} SLO failed")
    assert [c.slo for c in verdict.checks if c.status == "fail"] == [slo]


def test_shifted_predictions_are_rolled_back() -> None:
    shifted = Evidence(**{**twin(1000).__dict__, "psi": 0.9})
    verdict = judge(shifted, SLO, MIN_REQUESTS, MAX_MINUTES, MIN_LABELLED)
    assert (verdict.action, verdict.reason.split(":")[0]) == ("rollback", "predictions SLO failed")


@given(
    records=st.floats(0, 10_000),
    failure_ratio=st.floats(0, 1),
    latency=st.floats(0.0001, 1),
    psi=st.floats(0, 5) | st.none(),
    quality=st.floats(0, 1) | st.none(),
    minutes=st.floats(0, 200),
)
def test_never_promoted_below_min_requests_nor_past_an_slo(
    records: float,
    failure_ratio: float,
    latency: float,
    psi: float | None,
    quality: float | None,
    minutes: float,
) -> None:
    evidence = Evidence(
        canary=Side(records, records * failure_ratio, latency, quality, 400 if quality is not None else 0),
        stable=Side(9 * records, 0.0, 0.004, 0.85, 400),
        psi=psi,
        elapsed_seconds=minutes * 60,
        metric="roc_auc",
    )
    verdict = judge(evidence, SLO, MIN_REQUESTS, MAX_MINUTES, MIN_LABELLED)
    if verdict.action == "promote":
        assert records * (1 + failure_ratio) >= MIN_REQUESTS
        assert all(c.status in ("pass", "skipped") for c in verdict.checks)
        assert psi is not None
        assert psi <= SLO.max_psi
        assert latency <= SLO.max_latency_ratio * 0.004
    if verdict.action == "wait":
        assert minutes < MAX_MINUTES
        assert not any(c.status == "fail" for c in verdict.checks)


@given(failures=st.integers(0, 100))
def test_errors_fail_early_only_when_no_later_success_could_save_the_canary(failures: int) -> None:
    """Ten records in: a canary whose failures already exceed the limit at min_requests is rolled
    back now; one that could still end within it waits."""
    evidence = twin(10, failures=float(failures))
    evidence = Evidence(**{**evidence.__dict__, "stable": Side(records=90, p95_seconds=0.004)})  # no failures
    limit = SLO.max_error_ratio_increase * MIN_REQUESTS  # 5 failures in 500 records
    assert decide(evidence) == ("rollback" if failures > limit else "wait")


def test_undecided_at_the_deadline_is_rolled_back_and_says_what_was_missing() -> None:
    late = Evidence(**{**twin(100).__dict__, "elapsed_seconds": MAX_MINUTES * 60})
    verdict = judge(late, SLO, MIN_REQUESTS, MAX_MINUTES, MIN_LABELLED)
    assert verdict.action == "rollback"
    assert verdict.reason.startswith(f"undecided after {MAX_MINUTES:g} minutes: 100 of 500 canary records")


def test_without_outcomes_quality_is_skipped_and_says_so() -> None:
    evidence = twin(1000, quality=None)
    verdict = judge(evidence, SLO, MIN_REQUESTS, MAX_MINUTES, MIN_LABELLED)
    quality = next(c for c in verdict.checks if c.slo == "quality")
    assert (verdict.action, quality.status) == ("promote", "skipped")
    assert "no outcomes to judge by" in quality.detail


def test_without_prometheus_errors_and_latency_are_skipped_and_an_unreachable_one_holds_the_decision() -> (
    None
):
    unconfigured = Evidence(**{**twin(1000, p95_seconds=None).__dict__, "timed": "unconfigured"})
    verdict = judge(unconfigured, SLO, MIN_REQUESTS, MAX_MINUTES, MIN_LABELLED)
    assert verdict.action == "promote"
    assert {c.slo: c.status for c in verdict.checks if c.slo in ("errors", "latency")} == {
        "errors": "skipped",
        "latency": "skipped",
    }
    down = Evidence(
        **{**twin(1000).__dict__, "timed": "unreachable", "problems": ["Prometheus did not answer"]}
    )
    verdict = judge(down, SLO, MIN_REQUESTS, MAX_MINUTES, MIN_LABELLED)
    assert verdict.action == "wait"
    assert "Prometheus did not answer" in verdict.reason


def test_an_entity_keeps_its_side_and_the_shares_are_kept() -> None:
    ids = [f"customer-{i}" for i in range(20_000)]
    inside = [i for i in ids if in_canary(i, "7", 0.1)]
    assert inside == [i for i in ids if in_canary(i, "7", 0.1)]  # the same on every call (and replica)
    assert 0.1 * 20_000 - 4 * 42 < len(inside) < 0.1 * 20_000 + 4 * 42  # 4 standard deviations
    # A larger share only adds entities; another version draws afresh.
    assert set(inside) <= {i for i in ids if in_canary(i, "7", 0.3)}
    assert inside != [i for i in ids if in_canary(i, "8", 0.1)]


@given(st.text(min_size=1, max_size=40), st.floats(0, 1), st.floats(0, 1))
def test_in_canary_is_monotone_in_the_share(entity: str, low: float, high: float) -> None:
    assume(low <= high)
    assert not in_canary(entity, "3", low) or in_canary(entity, "3", high)


def logged(probabilities: list[float]) -> list[LoggedPrediction]:
    return [
        LoggedPrediction(0.0, "1", "champion", "yes" if p > 0.5 else "no", {"no": 1 - p, "yes": p})
        for p in probabilities
    ]


def test_the_prediction_shift_is_small_for_the_same_model_and_large_for_a_shifted_one() -> None:
    rng = random.Random(3)  # noqa: S311  # test data, seeded
    stable = logged([rng.betavariate(2, 5) for _ in range(2000)])
    same = logged([rng.betavariate(2, 5) for _ in range(300)])
    shifted = logged([min(1.0, rng.betavariate(2, 5) + 0.3) for _ in range(300)])
    calm, moved = (
        prediction_shift(stable, same, "classification"),
        prediction_shift(stable, shifted, "classification"),
    )
    assert calm is not None
    assert moved is not None
    assert calm < SLO.max_psi < moved
    assert prediction_shift(stable, same[: MIN_SHIFT_ROWS - 1], "classification") is None


def test_a_canary_may_answer_as_differently_as_it_did_on_the_holdout_where_it_won() -> None:
    """A model retrained for a changed world answers differently from the old one: the shift its
    holdout showed is allowed, and rollout.slo.max_psi beyond it."""
    moved = Evidence(**{**twin(1000).__dict__, "psi": 0.9})
    assert judge(moved, SLO, MIN_REQUESTS, MAX_MINUTES, MIN_LABELLED, expected_psi=0.8).action == "promote"
    assert judge(moved, SLO, MIN_REQUESTS, MAX_MINUTES, MIN_LABELLED, expected_psi=0.6).action == "rollback"
    assert judge(moved, SLO, MIN_REQUESTS, MAX_MINUTES, MIN_LABELLED).action == "rollback"
