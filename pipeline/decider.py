"""The rollout decider: a new champion earns its traffic or rolls itself back.

One decider (`python -m pipeline rollout decide`, the `rollout` DAG every minute) reads the
rollout's terms from the registry (`core.rollout`), gathers the evidence since it started
from Prometheus (records, failures and model-call time per side, summed over every replica) and
the prediction log (the shift of the canary's predictions against the stable version's on the same
traffic, and live quality where outcomes arrived), and judges it against `rollout.slo`: promote
when every SLO holds after the rollout's `min_requests` canary records; roll back as soon as one
fails, or when its time runs out undecided. It keeps no state: one that dies mid-rollout is
replaced by the next run, which reads the same registry.

Promotion moves `@champion` (the former one to `@previous`); a rollback deletes `@canary`. Either
way the version is tagged with the outcome, the reason and the figures, and the registered model
with the last outcome, which the model servers export (`bitloop_rollout_last_timestamp_seconds`)
for the alert, and the training DAG's summary reports. `python -m pipeline rollout
status|promote|abort` lets a person act.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, cast

import httpx
import numpy as np

from core.params import HIGHER_IS_BETTER, Params, RolloutSlo
from core.registry import CANARY, CHAMPION, PREVIOUS, TAG, Tags, alias_version, connect
from core.rollout import (
    Rollout,
    RolloutError,
    current,
    last_outcome,
    read_rollout,
    score_shift,
    shift_class,
)
from core.settings import PipelineSettings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from core.predictions import LoggedPrediction

log = logging.getLogger(__name__)

MIN_SHIFT_ROWS = 100
"""Logged predictions each side needs before the shift of the canary's is judged."""
CONFIDENCE = 0.95
"""An SLO fails only when the evidence says so with this confidence: a canary is never rolled back
for the noise of a few hundred records (a PSI a hair past its line, a quality drop within the
spread of 300 outcomes)."""
QUALITY_DRAWS = 100
"""Bootstrap resamples behind the spread of a side's live quality."""

RolloutEnd = Literal["promoted", "rolled_back", "aborted"]
ACTIONS: dict[RolloutEnd, str] = {"promoted": "promote", "rolled_back": "rollback", "aborted": "abort"}
Action = Literal["promote", "rollback", "wait"]


# --- evidence and judgement -------------------------------------------------------------------


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
    canary, stable = evidence.canary, evidence.stable
    enough = canary.records + canary.failures >= min_requests
    checks: list[Check] = []

    if evidence.timed == "unconfigured":
        skipped = "no Prometheus configured (BITLOOP_PROMETHEUS_URL): not judged"
        checks += [Check("errors", "skipped", skipped), Check("latency", "skipped", skipped)]
    else:
        checks += _served_checks(evidence, slo, min_requests, enough)

    if evidence.psi is None or not enough:
        checks.append(Check("predictions", "pending", "too few logged predictions on either side"))
    else:
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
        checks.append(Check("predictions", "fail" if evidence.psi > limit + noise else "pass", detail))

    if canary.quality is None or stable.quality is None:
        checks.append(
            Check(
                "quality",
                "skipped",
                f"no outcomes to judge by: {canary.labelled} canary and {stable.labelled} stable predictions "
                f"labelled, {min_labelled} needed on each side",
            )
        )
    else:
        better = HIGHER_IS_BETTER[evidence.metric]
        drop = stable.quality - canary.quality if better else canary.quality - stable.quality
        spread = _one_sided_z() * math.hypot(canary.quality_spread, stable.quality_spread)
        detail = (
            f"live {evidence.metric} canary {canary.quality:.4f} vs stable {stable.quality:.4f} "
            f"(may be worse by {slo.max_quality_drop:g}, plus {spread:.4f} for the sampling noise of "
            f"{canary.labelled} and {stable.labelled} outcomes)"
        )
        checks.append(Check("quality", "fail" if drop - spread > slo.max_quality_drop else "pass", detail))

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
    statistic); checked against simulation in tests/pipeline/test_rollout.py. Without rows: no bound.
    """
    from scipy.stats import chi2

    from core.rollout import PSI_BINS

    if min(rows, base_rows) <= 0:
        return math.inf
    return float(chi2.ppf(CONFIDENCE, PSI_BINS - 1)) * (1 / rows + 1 / base_rows)


def quality_spread(rows: list[LoggedPrediction], task: str, classes: list[Any], metric: str) -> float:
    """Standard error of live `metric` over these predictions' outcomes: bootstrap over the
    labelled rows (seeded, so a decision is repeatable); 0 with fewer than two."""
    from core.quality import outcome_arrays
    from core.scoring import task_metrics

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


# --- gathering the evidence -------------------------------------------------------------------


def _series(prometheus: str, query: str) -> list[tuple[dict[str, str], float]]:
    """One PromQL instant query: each series' labels and finite value."""
    answer = httpx.get(f"{prometheus.rstrip('/')}/api/v1/query", params={"query": query}, timeout=10.0)
    answer.raise_for_status()
    found = [(r["metric"], float(r["value"][1])) for r in answer.json()["data"]["result"]]
    return [(labels, value) for labels, value in found if math.isfinite(value)]


def _query(prometheus: str, query: str) -> float | None:
    """One PromQL instant query summed over its series; None when it has no (finite) value."""
    values = [value for _, value in _series(prometheus, query)]
    return sum(values) if values else None


Figures = tuple[float, float, float | None, tuple[tuple[float, float], ...] | None]
"""Records, failures, p95 model-call time and its histogram, of one side (`served_figures`)."""


def served_figures(prometheus: str, model: str, version: str, variant: str, seconds: float) -> Figures:
    """Records answered, records it failed to score, the p95 model-call time (s) and the calls'
    histogram of one side over the last `seconds`, summed over every replica Prometheus scrapes."""
    # The window is the rollout's own age, so that an earlier rollout's calls never count; a window
    # shorter than two scrapes has no value yet, and the decider waits.
    window = f"[{max(1, math.ceil(seconds))}s]"
    side = f'model="{model}",variant="{variant}",version="{version}"'
    records = _query(prometheus, f"sum(increase(bitloop_predictions_total{{{side}}}{window}))")
    failures = _query(
        prometheus,
        f"sum(increase(bitloop_prediction_failures_total{{{side}}}{window}))",
    )
    p95 = _query(
        prometheus,
        f"histogram_quantile(0.95, sum by (le) "
        f"(increase(bitloop_inference_duration_seconds_bucket{{{side}}}{window})))",
    )
    histogram = f"sum by (le) (increase(bitloop_inference_duration_seconds_bucket{{{side}}}{window}))"
    buckets = sorted((float(labels["le"]), value) for labels, value in _series(prometheus, histogram))
    return records or 0.0, failures or 0.0, p95, tuple(buckets) or None


def gather(
    rollout: Rollout,
    params: Params,
    client: MlflowClient,
    prometheus: str | None,
    prediction_log: str,
    now: datetime,
) -> Evidence:
    """Everything both sides showed since the rollout started; what cannot be had is named in
    `problems` and leaves its SLOs pending."""
    from core.predictions import read_labelled
    from core.quality import evaluate
    from core.registry import run_schema

    elapsed = rollout.elapsed_seconds(now)
    metric = params.promote.primary_metric(params.data.task)
    problems: list[str] = []
    figures: dict[str, Figures] = {}
    timed: Literal["yes", "unconfigured", "unreachable"] = "yes" if prometheus else "unconfigured"
    if prometheus:
        try:
            for variant, version in (("canary", rollout.version), ("champion", rollout.stable)):
                figures[variant] = served_figures(prometheus, rollout.model, version, variant, elapsed)
        except (httpx.HTTPError, KeyError, ValueError) as err:
            problems.append(f"Prometheus did not answer ({type(err).__name__}): errors and latency wait")
            timed, figures = "unreachable", {}

    rows = read_labelled(
        prediction_log, rollout.model, since=rollout.started_at.timestamp(), limit=params.quality.max_rows
    )
    canary_rows = [r for r in rows if r.version == rollout.version and r.variant == "canary"]
    stable_rows = [r for r in rows if r.version == rollout.stable and r.variant == "champion"]
    schema = run_schema(client, str(client.get_model_version(rollout.model, rollout.version).run_id))
    quality = {
        (q.version, q.variant): q
        for q in evaluate(
            canary_rows + stable_rows, schema.task, list(schema.classes), params.quality, params.promote, {}
        )
    }

    rows_of = {"canary": canary_rows, "champion": stable_rows}

    def side(variant: str, version: str) -> Side:
        # Without Prometheus the prediction log counts the answered records.
        records, failures, p95, buckets = figures.get(
            variant, (float(len(rows_of[variant])), 0.0, None, None)
        )
        found = quality.get((version, variant))
        return Side(
            records=records,
            failures=failures,
            p95_seconds=p95,
            latency_buckets=buckets,
            quality=None if found is None else found.realized.get(metric),
            labelled=0 if found is None else found.labelled,
            quality_spread=(
                0.0
                if found is None or metric not in found.realized
                else quality_spread(rows_of[variant], schema.task, list(schema.classes), metric)
            ),
        )

    return Evidence(
        canary=side("canary", rollout.version),
        stable=side("champion", rollout.stable),
        psi=prediction_shift(stable_rows, canary_rows, schema.task),
        psi_rows=(len(canary_rows), len(stable_rows)),
        elapsed_seconds=elapsed,
        metric=metric,
        timed=timed,
        problems=problems,
    )


# --- acting on it -----------------------------------------------------------------------------


def conclude(
    client: MlflowClient,
    rollout: Rollout,
    outcome: RolloutEnd,
    reason: str,
    figures: dict[str, str],
    now: datetime | None = None,
) -> dict[str, Any]:
    """End a rollout: promote moves @champion to the canary (the stable version to @previous);
    rolled_back and aborted leave @champion as it is. Either way @canary goes, and the version and
    the registered model record the outcome.

    The decision is written on the version before anything moves, and every step after it is safe
    to repeat: a decider that dies half-way leaves a recorded decision the next one finishes
    (`recorded_decision`), never one it judges again."""
    now = now or datetime.now(UTC)
    name, version = rollout.model, rollout.version
    tags = {
        Tags.DECISION: outcome,
        Tags.DECISION_REASON: reason,
        Tags.ROLLOUT_FIGURES: json.dumps(figures, sort_keys=True),
        Tags.ROLLOUT_OUTCOME: outcome,  # last: its presence means the three above are there
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value[:5000])
    if outcome == "promoted":
        champion = alias_version(client, name, CHAMPION)
        if champion is None or champion.version != version:
            client.set_registered_model_alias(name, PREVIOUS, rollout.stable)
            client.set_registered_model_alias(name, CHAMPION, version)
    _record_in_summary(client, name, version, outcome, reason)
    last = {
        "version": version,
        "stable": rollout.stable,
        "outcome": outcome,
        "reason": reason,
        "at": now.isoformat(),
    }
    client.set_registered_model_tag(name, Tags.ROLLOUT_LAST, json.dumps(last))
    canary = alias_version(client, name, CANARY)
    if canary is not None and canary.version == version:
        client.delete_registered_model_alias(name, CANARY)
    level = logging.INFO if outcome == "promoted" else logging.WARNING
    log.log(
        level,
        "rollout ended",
        extra={"model": name, "version": version, "outcome": outcome, "reason": reason},
    )
    return {"model": name, **last, "figures": figures}


def recorded_decision(version: ModelVersion) -> tuple[RolloutEnd, str, dict[str, str]] | None:
    """The outcome, reason and figures a decider wrote on the canary before it stopped; None when
    the rollout is undecided."""
    tags = version.tags or {}
    outcome = tags.get(Tags.ROLLOUT_OUTCOME)
    if outcome not in ("promoted", "rolled_back", "aborted"):
        return None
    try:
        figures = {str(k): str(v) for k, v in json.loads(tags.get(Tags.ROLLOUT_FIGURES, "{}")).items()}
    except (ValueError, AttributeError):
        figures = {}
    return cast("RolloutEnd", outcome), tags.get(Tags.DECISION_REASON, ""), figures


def _record_in_summary(client: MlflowClient, name: str, version: str, outcome: str, reason: str) -> None:
    """Tag the training summary run whose promotion started this rollout with how it ended."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return
    for run in client.search_runs(
        [experiment.experiment_id], f"tags.`{Tags.CANARY_VERSION}` = '{version}'", max_results=5
    ):
        client.set_tag(run.info.run_id, Tags.ROLLOUT_OUTCOME, outcome)
        client.set_tag(run.info.run_id, Tags.ROLLOUT_REASON, reason[:5000])


def _under_way(client: MlflowClient, name: str) -> Rollout:
    canary = alias_version(client, name, CANARY)
    if canary is None:
        raise RolloutError(f"{name} has no @canary: no rollout is under way")
    rollout = read_rollout(canary)
    if rollout is None:
        raise RolloutError(
            f"{name}@canary (version {canary.version}) carries no rollout terms (its {TAG}rollout.* tags): "
            "it was not started by promote; delete the alias, or let promote start the next rollout"
        )
    return rollout


def assess(
    rollout: Rollout,
    params: Params,
    client: MlflowClient,
    settings: PipelineSettings,
    prediction_log: str,
    now: datetime,
) -> tuple[Evidence, Verdict]:
    """The evidence so far and the verdict on it, on the rollout's own terms and params' SLOs."""
    evidence = gather(rollout, params, client, settings.prometheus_url, prediction_log, now)
    verdict = judge(
        evidence,
        params.rollout.slo,
        rollout.min_requests,
        rollout.max_minutes,
        params.quality.min_labelled,
        rollout.expected_psi,
    )
    return evidence, verdict


def decide(
    params: Params, settings: PipelineSettings, prediction_log: str, now: datetime | None = None
) -> dict[str, Any]:
    """The decider's one step: judge the rollout under way and act on the verdict."""
    now = now or datetime.now(UTC)
    client = connect(settings)
    name = params.model.name
    canary = alias_version(client, name, CANARY)
    if canary is None:
        return {"model": name, "action": "none", "reason": "no rollout under way"}
    rollout = _under_way(client, name)
    if (recorded := recorded_decision(canary)) is not None:  # a decider stopped half-way
        outcome, reason, figures = recorded
        log.warning("finishing a recorded rollout decision", extra={"model": name, "outcome": outcome})
        ended = conclude(client, rollout, outcome, reason, figures, now)
        return {**ended, "action": ACTIONS[outcome], "resumed": True}
    evidence, verdict = assess(rollout, params, client, settings, prediction_log, now)
    report: dict[str, Any] = {
        "model": name,
        "version": rollout.version,
        "stable": rollout.stable,
        "share": rollout.share,
        "elapsed_seconds": round(evidence.elapsed_seconds, 1),
        "canary_records": evidence.canary.records + evidence.canary.failures,
        "min_requests": rollout.min_requests,
        "action": verdict.action,
        "reason": verdict.reason,
        "checks": [asdict(c) for c in verdict.checks],
    }
    if verdict.action == "promote":
        conclude(client, rollout, "promoted", verdict.reason, verdict.figures(), now)
    elif verdict.action == "rollback":
        conclude(client, rollout, "rolled_back", verdict.reason, verdict.figures(), now)
    return report


def status(
    params: Params, settings: PipelineSettings, prediction_log: str, now: datetime | None = None
) -> dict[str, Any]:
    """The rollout under way with the evidence so far and the verdict it would get now (nothing is
    done), and how the last one ended."""
    now = now or datetime.now(UTC)
    client = connect(settings)
    name = params.model.name
    champion = alias_version(client, name, CHAMPION)
    rollout = current(client, name)
    shown: dict[str, Any] = {
        "model": name,
        "champion": None if champion is None else champion.version,
        "canary": None if rollout is None else rollout.terms(),
        "last": last_outcome(dict(client.get_registered_model(name).tags)),
    }
    if rollout is not None:
        evidence, verdict = assess(rollout, params, client, settings, prediction_log, now)
        shown["canary_records"] = evidence.canary.records + evidence.canary.failures
        shown["verdict_now"] = {"action": verdict.action, "reason": verdict.reason}
        shown["checks"] = [asdict(c) for c in verdict.checks]
    return shown


def act(params: Params, settings: PipelineSettings, outcome: RolloutEnd, who: str) -> dict[str, Any]:
    """A person ends the rollout under way: `promoted` or `aborted`; RolloutError with none."""
    client = connect(settings)
    rollout = _under_way(client, params.model.name)
    reason = f"{'promoted' if outcome == 'promoted' else 'aborted'} by hand ({who})"
    return conclude(client, rollout, outcome, reason, {})
