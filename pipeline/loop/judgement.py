"""The rollout's judgement: the evidence both sides of the split showed, and the verdict it earns.

Pure functions of the evidence (no registry, no Prometheus, no clock), so the backtests
(`pipeline.backtest`) judge simulated canaries with the very code the decider runs: an SLO fails
only when the evidence says so with `CONFIDENCE`, and passes only once enough records arrived.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from core.params import HIGHER_IS_BETTER, RolloutSlo
from core.rollout import (
    score_shift,
    shift_class,
)

if TYPE_CHECKING:
    from core.predictions.rows import LoggedPrediction


MIN_SHIFT_ROWS = 100
"""Logged predictions each side needs before the shift of the canary's is judged."""
CONFIDENCE = 0.95
"""An SLO fails only when the evidence says so with this confidence: a canary is never rolled back
for the noise of a few hundred records (a PSI a hair past its line, a quality drop within the
spread of 300 outcomes)."""
QUALITY_DRAWS = 100
"""Bootstrap resamples behind the spread of a side's live quality."""

Action = Literal["promote", "rollback", "wait"]


@dataclass(frozen=True)
class Side:
    """What one side of the split showed since the rollout started."""

    records: float = 0.0
    """Records answered."""
    failures: float = 0.0
    """Records it failed to score, whatever the cause: the same traffic's bad inputs fail on both
    sides alike, so only the canary's own faults raise its ratio above the stable one's."""
    p95_seconds: float | None = None
    """95th percentile of its model calls' duration."""
    quality: float | None = None
    """Live promote.metric on its labelled predictions, from quality.min_labelled of them on."""
    labelled: int = 0
    quality_spread: float = 0.0
    """Standard error of `quality` (bootstrap over its labelled predictions)."""
    latency_buckets: tuple[tuple[float, float], ...] | None = None
    """Its model calls' histogram: (upper bound in seconds, cumulative count) per bucket, the last
    +Inf. With it the latency SLO judges confidence bounds on each side's p95, not the two points."""

    @property
    def error_ratio(self) -> float:
        attempts = self.records + self.failures
        return self.failures / attempts if attempts else 0.0


@dataclass(frozen=True)
class Evidence:
    canary: Side
    stable: Side
    psi: float | None
    """Shift of the canary's predictions against the stable version's (None: too few of either)."""
    elapsed_seconds: float
    metric: str
    """The quality metric (promote.metric)."""
    timed: Literal["yes", "unconfigured", "unreachable"] = "yes"
    """Whether failures and model-call times came from Prometheus; unconfigured: those SLOs are
    skipped (and say so), unreachable: they wait."""
    problems: list[str] = field(default_factory=list)
    """Evidence that could not be gathered (Prometheus unreachable, say), in words."""
    psi_rows: tuple[int, int] | None = None
    """The canary's and the stable side's predictions the shift was measured on (None: the shift is
    taken as exact, with no allowance for sampling noise)."""


@dataclass(frozen=True)
class Check:
    slo: str
    status: Literal["pass", "fail", "pending", "skipped"]
    detail: str


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str
    checks: list[Check]

    def figures(self) -> dict[str, str]:
        return {c.slo: f"{c.status}: {c.detail}" for c in self.checks}


def judge(
    evidence: Evidence,
    slo: RolloutSlo,
    min_requests: int,
    max_minutes: float,
    min_labelled: int,
    expected_psi: float = 0.0,
) -> Verdict:
    """Promote, roll back or wait, from the evidence; a pure function of its arguments.

    An SLO is judged once the canary answered `min_requests` records, except errors, which
    fail early once the canary's failures alone put it past the limit at `min_requests` records
    whatever the rest does. The canary's predictions may differ from the stable version's as much as
    they did on the holdout where it won (`expected_psi`: a model retrained for a changed world is
    meant to answer differently) plus `slo.max_psi`. Live quality is judged only when both sides
    have `min_labelled` outcomes; without them it is skipped, and says so.
    """
    canary = evidence.canary
    enough = canary.records + canary.failures >= min_requests
    checks: list[Check] = []

    if evidence.timed == "unconfigured":
        skipped = "no Prometheus configured (BITLOOP_PROMETHEUS_URL): not judged"
        checks += [Check("errors", "skipped", skipped), Check("latency", "skipped", skipped)]
    else:
        checks += _served_checks(evidence, slo, min_requests, enough)

    checks.append(_prediction_check(evidence, slo, expected_psi, enough))
    checks.append(_quality_check(evidence, slo, min_labelled))

    failed = [c for c in checks if c.status == "fail"]
    if failed:
        return Verdict("rollback", "; ".join(f"{c.slo} SLO failed: {c.detail}" for c in failed), checks)
    if enough and not any(c.status == "pending" for c in checks):
        return Verdict(
            "promote", f"every SLO held over {canary.records + canary.failures:.0f} canary records", checks
        )
    if evidence.elapsed_seconds >= max_minutes * 60:
        pending = ", ".join(c.slo for c in checks if c.status == "pending")
        return Verdict(
            "rollback",
            f"undecided after {max_minutes:g} minutes: {canary.records + canary.failures:.0f} of "
            f"{min_requests} canary records, {pending} not judged"
            + ("; " + "; ".join(evidence.problems) if evidence.problems else ""),
            checks,
        )
    return Verdict(
        "wait",
        "gathering evidence" + ("; " + "; ".join(evidence.problems) if evidence.problems else ""),
        checks,
    )


def _prediction_check(evidence: Evidence, slo: RolloutSlo, expected_psi: float, enough: bool) -> Check:
    """The canary's predictions against the stable version's on the same traffic."""
    if evidence.psi is None or not enough:
        return Check("predictions", "pending", "too few logged predictions on either side")
    limit = expected_psi + slo.max_psi
    noise = 0.0 if evidence.psi_rows is None else psi_noise(*evidence.psi_rows)
    sampled = (
        ""
        if evidence.psi_rows is None
        else f", plus {noise:.3f} for the sampling noise of {evidence.psi_rows[0]} and "
        f"{evidence.psi_rows[1]} predictions"
    )
    detail = (
        f"PSI {evidence.psi:.3f} against the stable version's (the holdout's, at these sample sizes, "
        f"{expected_psi:.3f}; "
        f"limit {limit:.3f}{sampled})"
    )
    return Check("predictions", "fail" if evidence.psi > limit + noise else "pass", detail)


def _quality_check(evidence: Evidence, slo: RolloutSlo, min_labelled: int) -> Check:
    """Live quality on both sides' outcomes, within the sampling noise of their counts."""
    canary, stable = evidence.canary, evidence.stable
    if canary.quality is None or stable.quality is None:
        return Check(
            "quality",
            "skipped",
            f"no outcomes to judge by: {canary.labelled} canary and {stable.labelled} stable predictions "
            f"labelled, {min_labelled} needed on each side",
        )
    better = HIGHER_IS_BETTER[evidence.metric]
    drop = stable.quality - canary.quality if better else canary.quality - stable.quality
    spread = _one_sided_z() * math.hypot(canary.quality_spread, stable.quality_spread)
    detail = (
        f"live {evidence.metric} canary {canary.quality:.4f} vs stable {stable.quality:.4f} "
        f"(may be worse by {slo.max_quality_drop:g}, plus {spread:.4f} for the sampling noise of "
        f"{canary.labelled} and {stable.labelled} outcomes)"
    )
    return Check("quality", "fail" if drop - spread > slo.max_quality_drop else "pass", detail)


def _served_checks(evidence: Evidence, slo: RolloutSlo, min_requests: int, enough: bool) -> list[Check]:
    """The errors and latency SLOs, from the figures Prometheus gave."""
    canary, stable = evidence.canary, evidence.stable
    if evidence.timed == "unreachable":
        waiting = "Prometheus did not answer: waiting for it"
        return [Check("errors", "pending", waiting), Check("latency", "pending", waiting)]
    checks = []
    allowed = stable.error_ratio + slo.max_error_ratio_increase
    # Judged over at least min_requests attempts (past the limit whatever the rest does), and only
    # beyond what that many attempts failing at the limit reach by chance (binomial, CONFIDENCE).
    attempts = max(min_requests, canary.records + canary.failures)
    chance = _binomial_quantile(attempts, allowed)
    errors = (
        f"canary {canary.error_ratio:.2%} vs stable {stable.error_ratio:.2%} (limit {allowed:.2%}; "
        f"{canary.failures:.0f} failures where {attempts:.0f} records at the limit give up to {chance:.0f})"
    )
    if canary.failures > chance:
        checks.append(Check("errors", "fail", errors))
    else:
        checks.append(Check("errors", "pass" if enough else "pending", errors))
    if canary.p95_seconds is None or stable.p95_seconds is None or not enough:
        checks.append(Check("latency", "pending", "too few model calls timed on either side"))
        return checks
    ratio = canary.p95_seconds / stable.p95_seconds if stable.p95_seconds > 0 else math.inf
    detail = (
        f"p95 canary {canary.p95_seconds * 1000:.2f} ms vs stable {stable.p95_seconds * 1000:.2f} ms "
        f"({ratio:.2f}x, limit {slo.max_latency_ratio:g}x once slower by "
        f"{slo.min_latency_increase_ms:g} ms or more"
    )
    # The ratio is judged on bounds when the histograms are there: the canary's p95 at least its
    # lower bound, the stable version's at most its upper one, so neither the sampling of a few
    # hundred calls nor the width of a bucket can fail a canary that is not slower. The smallest
    # increase that counts is a matter of size, not of chance: it is read on the two p95s.
    low = p95_bounds(canary.latency_buckets)[0] if canary.latency_buckets else canary.p95_seconds
    high = p95_bounds(stable.latency_buckets)[1] if stable.latency_buckets else stable.p95_seconds
    if canary.latency_buckets and stable.latency_buckets:
        detail += (
            f"; at {CONFIDENCE:.0%} confidence the canary's is at least {low * 1000:.2f} ms, "
            f"the stable's at most {high * 1000:.2f} ms"
        )
    slowest = low / high if high > 0 else math.inf
    slower_ms = (canary.p95_seconds - stable.p95_seconds) * 1000
    slow = slowest > slo.max_latency_ratio and slower_ms >= slo.min_latency_increase_ms
    checks.append(Check("latency", "fail" if slow else "pass", detail + ")"))
    return checks


def p95_bounds(buckets: tuple[tuple[float, float], ...]) -> tuple[float, float]:
    """A distribution-free CONFIDENCE interval (two one-sided bounds) on the 95th percentile of the
    calls a histogram counted: the order statistics at ranks 0.95 n -+ z sqrt(n 0.95 0.05) bracket it
    (binomial), each read from its bucket by linear interpolation, as Prometheus's
    histogram_quantile reads a quantile (a rank in +Inf: the highest finite bound below, no bound
    above). `buckets` are (upper bound, cumulative count) pairs in order, as `sum by (le)` gives them.

    Written here because the p95 Prometheus interpolates is a point: a 500-call sample moves it by
    more than the latency SLO allows, and no client library bounds a quantile read from buckets."""
    edges = [b for b, _ in buckets]
    cumulative = np.maximum.accumulate([c for _, c in buckets])  # counters may jitter between scrapes
    n = float(cumulative[-1]) if len(cumulative) else 0.0
    if n <= 0:
        return 0.0, math.inf
    spread = _one_sided_z() * math.sqrt(n * 0.95 * 0.05)
    low_rank, high_rank = max(1.0, 0.95 * n - spread), 0.95 * n + spread
    high = math.inf if high_rank > n else at_rank(edges, cumulative, high_rank)
    return at_rank(edges, cumulative, low_rank), high


def at_rank(edges: list[float], cumulative: np.ndarray, rank: float) -> float:
    """The value of the call at `rank`, interpolated in the bucket that holds it, as Prometheus's
    histogram_quantile reads a quantile (in +Inf: the highest finite bound)."""
    index = int(np.searchsorted(cumulative, rank))  # the first bucket holding that many calls
    lower = 0.0 if index == 0 else float(edges[index - 1])
    if not math.isfinite(edges[index]):
        return lower
    below = 0.0 if index == 0 else float(cumulative[index - 1])
    inside = float(cumulative[index]) - below
    share = (rank - below) / inside if inside > 0 else 1.0
    return lower + (float(edges[index]) - lower) * share


def _binomial_quantile(attempts: float, ratio: float) -> float:
    from scipy.stats import binom

    return float(binom.ppf(CONFIDENCE, math.ceil(attempts), min(1.0, ratio)))


def _one_sided_z() -> float:
    from scipy.stats import norm

    return float(norm.ppf(CONFIDENCE))


def psi_noise(rows: int, base_rows: int) -> float:
    """How large the PSI of two samples of one distribution gets by chance (CONFIDENCE quantile).

    Over k bins, PSI ~ (1/n + 1/m) * chi-squared(k - 1) for samples of n and m drawn from the same
    distribution (PSI is the symmetric KL divergence, whose small-difference form is Pearson's
    statistic); checked against simulation in tests/pipeline/loop/test_judgement.py. Without rows: no bound.
    """
    from scipy.stats import chi2

    from core.rollout import PSI_BINS

    if min(rows, base_rows) <= 0:
        return math.inf
    return float(chi2.ppf(CONFIDENCE, PSI_BINS - 1)) * (1 / rows + 1 / base_rows)


def quality_spread(rows: list[LoggedPrediction], task: str, classes: list[Any], metric: str) -> float:
    """Standard error of live `metric` over these predictions' outcomes: bootstrap over the
    labelled rows (seeded, so a decision is repeatable); 0 with fewer than two."""
    from core.model_metrics import task_metrics
    from core.quality import outcome_arrays

    labelled = [r for r in rows if r.labelled]
    arrays = outcome_arrays(labelled, task, classes)
    if len(labelled) < 2 or arrays is None:
        return 0.0
    y, predicted, proba = arrays
    names = [str(c) for c in classes] if proba is not None else None
    rng = np.random.default_rng(0)
    values = []
    for _ in range(QUALITY_DRAWS):
        drawn = rng.integers(0, len(labelled), len(labelled))
        value = task_metrics(
            task, y[drawn], predicted[drawn], None if proba is None else proba[drawn], names, only=metric
        )[metric]
        if math.isfinite(value):
            values.append(value)
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def prediction_shift(
    stable: list[LoggedPrediction], canary: list[LoggedPrediction], task: str
) -> float | None:
    """PSI of the canary's logged predictions against the stable side's on the same traffic
    (`score_shift`); None with fewer than MIN_SHIFT_ROWS on either side. A classifier that logs no
    probabilities is compared by its predicted classes' shares."""
    if min(len(stable), len(canary)) < MIN_SHIFT_ROWS:
        return None
    if task == "classification" and any(r.probabilities is None for r in (*stable, *canary)):
        from core.drift_statistics import stability_index

        classes = sorted({str(r.prediction) for r in (*stable, *canary)})
        shares = [
            np.array([sum(str(r.prediction) == c for r in rows) for c in classes], dtype=float) / len(rows)
            for rows in (stable, canary)
        ]
        return stability_index(shares[0], shares[1])
    if task == "classification":
        key = shift_class((stable[0].probabilities or {}).keys())
        base, new = ([(r.probabilities or {}).get(key, 0.0) for r in rows] for rows in (stable, canary))
    else:
        base, new = ([float(r.prediction) for r in rows] for rows in (stable, canary))
    return score_shift(np.asarray(base, dtype=float), np.asarray(new, dtype=float))
