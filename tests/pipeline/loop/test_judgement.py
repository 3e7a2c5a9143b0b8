"""The rollout's judgement and split, as pure functions: properties, not the formulas restated."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from core.params import RolloutSlo
from core.predictions.rows import LoggedPrediction
from core.rollout import INFERENCE_BUCKETS, in_canary, score_shift
from pipeline.loop.judgement import (
    CONFIDENCE,
    MIN_SHIFT_ROWS,
    Evidence,
    Side,
    judge,
    p95_bounds,
    prediction_shift,
    psi_noise,
    quality_spread,
)
from tests.factories import PROJECT

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
        # Slower only within the ratio, or by less than the smallest increase that counts.
        assert (
            latency <= SLO.max_latency_ratio * 0.004 or latency - 0.004 < SLO.min_latency_increase_ms / 1000
        )
        # Failing more than allowed only within the noise of that many records (binomial, 95%).
        attempts = records * (1 + failure_ratio)
        noise = 1.645 * (SLO.max_error_ratio_increase / attempts) ** 0.5 + 1 / attempts
        assert failure_ratio / (1 + failure_ratio) <= SLO.max_error_ratio_increase + noise
        assert quality is None or 0.85 - quality <= SLO.max_quality_drop + 1e-12
    if verdict.action == "wait":
        assert minutes < MAX_MINUTES
        assert not any(c.status == "fail" for c in verdict.checks)


def early(failures: int) -> str:
    """Ten records in, the stable version failing on none: the limit is 1% of min_requests."""
    evidence = twin(10, failures=float(failures))
    evidence = Evidence(**{**evidence.__dict__, "stable": Side(records=90, p95_seconds=0.004)})
    return decide(evidence)


def test_errors_fail_early_only_past_the_limit_and_its_noise() -> None:
    """At the limit (5 failures in 500 records) a canary waits; at three times it (15, which 500
    records failing at 1% reach by chance with probability 0.0002) it is rolled back at once; and
    more failures never turn a rollback into a wait."""
    verdicts = [early(f) for f in range(40)]
    assert set(verdicts[:6]) == {"wait"}
    assert set(verdicts[15:]) == {"rollback"}
    first = verdicts.index("rollback")
    assert set(verdicts[first:]) == {"rollback"}


def test_a_canary_failing_at_the_limit_is_rarely_rolled_back_and_at_four_times_it_always() -> None:
    """Simulated rollouts judged at min_requests records: failures drawn at the allowed ratio are
    rolled back at most 5% of the time (CONFIDENCE); at four times it at least 95%."""
    rng = np.random.default_rng(0)
    stable = Side(records=4500, failures=0.0, p95_seconds=0.004)

    def rolled_back(ratio: float) -> float:
        verdicts = []
        for failures in rng.binomial(MIN_REQUESTS, ratio, 1000):
            canary = Side(records=MIN_REQUESTS - failures, failures=float(failures), p95_seconds=0.004)
            evidence = Evidence(canary, stable, 0.01, 120.0, "roc_auc")
            verdicts.append(judge(evidence, SLO, MIN_REQUESTS, MAX_MINUTES, MIN_LABELLED).action)
        return verdicts.count("rollback") / len(verdicts)

    assert rolled_back(SLO.max_error_ratio_increase) <= 0.05
    assert rolled_back(4 * SLO.max_error_ratio_increase) >= 0.95


def test_undecided_at_the_deadline_is_rolled_back_and_says_what_was_missing() -> None:
    late = Evidence(**{**twin(100).__dict__, "elapsed_seconds": MAX_MINUTES * 60})
    verdict = judge(late, SLO, MIN_REQUESTS, MAX_MINUTES, MIN_LABELLED)
    assert verdict.action == "rollback"
    assert verdict.reason.startswith(f"undecided after {MAX_MINUTES:g} minutes: 100 of 500 canary records")


def test_without_outcomes_quality_is_skipped_and_says_so() -> None:
    evidence = twin(1000, quality=None)
    evidence = Evidence(
        **{**evidence.__dict__, "stable": Side(**{**evidence.stable.__dict__, "quality": None})}
    )
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
    assert inside == [i for i in ids if in_canary(i, "7", 0.1)]  # the same on every call
    # ...and in every replica: other processes, each with its own string-hash seed.
    script = (
        "from core.rollout import in_canary\n"
        "print(','.join(f'customer-{i}' for i in range(20_000) if in_canary(f'customer-{i}', '7', 0.1)))"
    )
    for seed in ("1", "2"):
        other = subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            cwd=PROJECT,
        )
        assert other.stdout.strip().split(",") == inside, seed
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


def test_the_psi_noise_bound_holds_for_samples_of_one_distribution() -> None:
    """Two samples of one score distribution exceed `psi_noise` in about 1 - CONFIDENCE of draws: the
    bound is what chance alone produces, at the sizes a rollout sees."""
    rng = np.random.default_rng(5)
    for rows, base_rows in ((100, 900), (300, 2700), (1000, 9000)):
        shifts = [score_shift(rng.beta(2, 5, base_rows), rng.beta(2, 5, rows)) for _ in range(600)]
        past = float(np.mean(np.array(shifts) > psi_noise(rows, base_rows)))
        assert 0.01 <= past <= (1 - CONFIDENCE) + 0.03, (rows, past)


def test_a_good_canary_is_not_rolled_back_for_noise_and_a_bad_one_still_is() -> None:
    """Seen on a busy machine: a PSI 0.004 past its line on 300 canary records, and a p95 of 8.5 ms
    against 2.4 ms, each rolled back a good candidate. Both are within noise; a real fault is not."""
    hair = Evidence(**{**twin(1000).__dict__, "psi": 0.353, "psi_rows": (300, 2700)})
    assert judge(hair, SLO, MIN_REQUESTS, MAX_MINUTES, MIN_LABELLED, expected_psi=0.149).action == "promote"
    far = Evidence(**{**hair.__dict__, "psi": 0.9})
    assert judge(far, SLO, MIN_REQUESTS, MAX_MINUTES, MIN_LABELLED, expected_psi=0.149).action == "rollback"
    noisy = twin(1000, p95_seconds=0.0085)
    noisy = Evidence(
        **{**noisy.__dict__, "stable": Side(**{**noisy.stable.__dict__, "p95_seconds": 0.00243})}
    )
    assert decide(noisy) == "promote"
    slow = Evidence(**{**noisy.__dict__, "canary": Side(**{**noisy.canary.__dict__, "p95_seconds": 0.0243})})
    assert decide(slow) == "rollback"  # ten times as slow, and 22 ms slower


def labelled_rows(outcomes: list[int], probabilities: list[float], variant: str) -> list[LoggedPrediction]:
    return [
        LoggedPrediction(0.0, "1", variant, int(p > 0.5), {"0": 1 - p, "1": p}, y, 1.0)
        for y, p in zip(outcomes, probabilities, strict=True)
    ]


def test_live_quality_fails_a_canary_only_past_the_noise_of_its_outcomes() -> None:
    """Both sides drawn from one model: the canary's 150 outcomes give a live ROC AUC that
    wanders by more than max_quality_drop (judged without its spread, 6 of these 20 good canaries
    were rolled back), yet it is rolled back in at most 1 of 20 draws; a canary that is really
    worse (its scores mostly noise) is rolled back in every one of 10 draws."""
    rng = np.random.default_rng(11)

    def side(rows: int, noise: float, variant: str) -> tuple[Side, list[LoggedPrediction]]:
        outcomes = rng.integers(0, 2, rows)
        scores = np.clip(0.5 + (outcomes - 0.5) * 0.25 + rng.normal(0, 0.25 + noise, rows), 0, 1)
        found = labelled_rows([int(y) for y in outcomes], [float(p) for p in scores], variant)
        from core.quality import realized_metrics

        auc = realized_metrics(found, "classification", [0, 1])["roc_auc"]
        spread = quality_spread(found, "classification", [0, 1], "roc_auc")
        return Side(records=1000, p95_seconds=0.004, quality=auc, labelled=rows, quality_spread=spread), found

    stable, _ = side(2700, 0.0, "champion")

    def verdict(noise: float) -> str:
        canary, _ = side(150, noise, "canary")
        evidence = Evidence(canary=canary, stable=stable, psi=0.01, elapsed_seconds=120.0, metric="roc_auc")
        return judge(evidence, SLO, MIN_REQUESTS, MAX_MINUTES, MIN_LABELLED).action

    good = [verdict(0.0) for _ in range(20)]
    bad = [verdict(0.6) for _ in range(10)]
    assert good.count("rollback") <= 1, good
    assert bad == ["rollback"] * 10, bad


def test_the_quality_spread_matches_the_known_standard_error_of_accuracy() -> None:
    """For accuracy the standard error is known: sqrt(p (1 - p) / n)."""
    rng = np.random.default_rng(2)
    outcomes = rng.integers(0, 2, 400)
    right = rng.random(400) < 0.8
    predictions = np.where(right, outcomes, 1 - outcomes)
    rows = [
        LoggedPrediction(0.0, "1", "canary", int(p), {"0": 1.0 - p, "1": float(p)}, int(y), 1.0)
        for y, p in zip(outcomes, predictions, strict=True)
    ]
    accuracy = float(np.mean(right))
    known = (accuracy * (1 - accuracy) / 400) ** 0.5
    assert quality_spread(rows, "classification", [0, 1], "accuracy") == pytest.approx(known, rel=0.3)


def histogram(
    seconds: np.ndarray, buckets: tuple[float, ...] = INFERENCE_BUCKETS
) -> tuple[tuple[float, float], ...]:
    """Model-call times as a histogram (the server's buckets by default): (upper bound, cumulative
    count), +Inf last."""
    edges = (*buckets, math.inf)
    return tuple((edge, float((seconds <= edge).sum())) for edge in edges)


def test_the_p95_bounds_of_a_known_histogram() -> None:
    """1,000 calls: 900 up to 2 ms, 90 more up to 5 ms, 10 slower. The 95th percentile's rank, 950,
    lies between ranks 938.7 and 961.3 with 90% confidence, both in the (2, 5] ms bucket: read as
    Prometheus reads a quantile, linearly in the bucket, 43% and 68% of the way through it."""
    buckets = ((0.001, 0.0), (0.002, 900.0), (0.005, 990.0), (math.inf, 1000.0))
    low, high = p95_bounds(buckets)
    assert low == pytest.approx(0.002 + 0.003 * (938.66 - 900) / 90, abs=1e-6)
    assert high == pytest.approx(0.002 + 0.003 * (961.34 - 900) / 90, abs=1e-6)
    assert p95_bounds(((0.001, 0.0), (math.inf, 0.0))) == (0.0, math.inf)  # nothing timed
    assert p95_bounds(((0.001, 10.0), (0.002, 10.0), (math.inf, 20.0))) == (0.002, math.inf)  # in +Inf


def test_the_p95_bounds_hold_the_true_p95_at_least_nine_times_in_ten() -> None:
    """Two one-sided 95% bounds: the true p95 of the calls' distribution falls outside them at most
    10% of the time for 500 calls of heavy-tailed times, in the server's buckets and in buckets so
    fine (0.1 ms) that only the ranks' spread keeps the bound (not the width of a bucket)."""
    rng = np.random.default_rng(1)
    true_p95 = 0.003 * math.exp(0.8 * 1.6449)  # log-normal, median 3 ms, sigma 0.8
    fine = tuple(np.round(np.arange(1, 2000) * 0.0001, 4))
    for buckets in (INFERENCE_BUCKETS, fine):
        held = []
        for _ in range(400):
            low, high = p95_bounds(histogram(0.003 * rng.lognormal(0.0, 0.8, 500), buckets))
            held.append(low <= true_p95 <= high)
        assert sum(held) / len(held) >= 0.9


def test_latency_is_judged_on_the_bounds_a_bit_slower_canary_passes_a_ten_times_slower_one_fails() -> None:
    """A canary 1.5x as slow whose interpolated p95 reads past 2x (a wide bucket, a few hundred
    calls) is promoted; one ten times as slow is rolled back, whatever the draw."""
    rng = np.random.default_rng(2)
    stable_calls = 0.004 * rng.lognormal(0.0, 0.5, 4500)
    for slower, action in ((1.5, "promote"), (10.0, "rollback")):
        for _ in range(50):
            calls = 0.004 * slower * rng.lognormal(0.0, 0.5, 500)
            canary = Side(records=500, p95_seconds=0.0201, latency_buckets=histogram(calls))
            stable = Side(records=4500, p95_seconds=0.0099, latency_buckets=histogram(stable_calls))
            evidence = Evidence(canary, stable, 0.01, 120.0, "roc_auc")
            verdict = judge(evidence, SLO, MIN_REQUESTS, MAX_MINUTES, MIN_LABELLED)
            assert verdict.action == action, verdict.reason
    points = Side(records=500, p95_seconds=0.0201), Side(records=4500, p95_seconds=0.0099)
    alone = judge(Evidence(*points, 0.01, 120.0, "roc_auc"), SLO, MIN_REQUESTS, MAX_MINUTES, MIN_LABELLED)
    assert alone.action == "rollback"  # the two points alone fail it
