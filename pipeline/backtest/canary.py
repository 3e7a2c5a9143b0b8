"""Canaries judged under noise: how often the rollout decider rolls back a good canary on a busy
machine with bursty traffic, and whether it catches every bad one.

The loop's scenarios (`pipeline.backtest.replay`) judge canaries without model-call times, as a stack
without Prometheus does. This trial adds what Prometheus would give the decider, drawn from a stated
model of a loaded 2-core machine, and replays rollouts minute by minute as the `rollout` DAG runs
the decider, through its own `judge`:

- the world: the loop's own stages train a champion on the world at rest and a candidate after a
  covariate step (drift 0 to 1), and promotion's rule admits it with its expected shift, as in the
  `drift` scenario; the customers served are drawn from the moved world;
- traffic: each rollout gets a mean rate of 150-400 requests a minute; each minute's count is
  Poisson around it, with a burst (3x) or a lull (0.3x) one minute in ten each; an entity keeps its
  side (`core.rollout.in_canary`, share `rollout.share`);
- outcomes: 80% of customers' outcomes arrive, 2-20 minutes after their answer;
- failures: bad inputs, a share of 0-1% per rollout, fail on both sides alike;
- model-call time: each side's cost (the stable version's 1-4 ms a call) times the machine's load
  that minute (log-normal, sigma 0.3, four times slower one minute in ten: both sides share it),
  times each call's jitter (log-normal, sigma 0.5), plus a pause of 5-50 ms for one call in 200;
  the p95 is read from the server's histogram buckets the way Prometheus's `histogram_quantile`
  reads it.

The canaries:

- `good`: the candidate as trained, its calls 0.5-1.5 times the stable version's cost; several
  rollouts per seed, each with its own noise. A rollback of one better on 20,000 fresh customers
  than the stable version is a false rollback.
- `errors`: the good candidate failing on 5% of records (it raises on a slice of inputs);
- `latency`: the good candidate ten times the stable version's cost;
- `predictions`: the good candidate whose probabilities are shifted live (logit + 3), as a serving
  fault the holdout could not show: its expected shift is the good candidate's;
- `quality`: the good candidate answering each customer with another customer's answer (a join gone
  wrong in serving): its predictions are distributed as the good candidate's, so the shift cannot
  tell, and only the outcomes show that it ranks no better than chance.

Measured beside the goals, not held to them: `quality-half`, the same fault on half the customers.
Its live quality falls by about 0.04, less than the sampling noise of the 150-250 outcomes a canary
has when it reaches `rollout.min_requests` records, so it is caught only by chance; catching it
needs more outcomes per decision (a larger `min_requests` or `share`).

Each bad canary is put in the canary's place directly, as a fault promotion could not see; it is
caught when it is rolled back (an undecided rollback counts too: it did not reach the champion).
"""

from __future__ import annotations

import bisect
import logging
import math
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.params import Params
from core.rollout import INFERENCE_BUCKETS as LATENCY_BUCKETS

log = logging.getLogger(__name__)

BAD_KINDS = ("errors", "latency", "predictions", "quality")
MEASURED_KINDS = ("quality-half",)
"""Bad canaries whose catch rate is reported, not held to the goal (see above)."""
GOOD_ROLLOUTS = 5
"""Rollouts of the good canary per seed, each with its own traffic and noise."""
POOL_ROWS = 40_000
"""Customers of the moved world whose answers a seed's rollouts draw from."""
SHIFTED_LOGIT = 3.0
FAILING_SHARE = 0.05


@dataclass(frozen=True)
class Rollout:
    kind: str
    seed: int
    action: str
    """promote or rollback (undecided rollouts end as rollback at rollout.max_minutes)."""
    reason: str
    minutes: int
    better: bool
    """Whether the canary beat the stable version on 20,000 fresh customers of the world."""

    @property
    def failed_slos(self) -> list[str]:
        return [part.split(" SLO failed")[0] for part in self.reason.split("; ") if " SLO failed" in part]


@dataclass
class SeedTrials:
    seed: int
    rollouts: list[Rollout] = field(default_factory=list)
    admitted: bool = True
    """Whether promotion's rule admitted the good candidate (its rollouts run only then)."""


def histogram_p95(counts: np.ndarray) -> float | None:
    """The 95th percentile Prometheus's histogram_quantile reads from bucket counts (one per
    LATENCY_BUCKETS upper bound, then +Inf); None without observations."""
    from pipeline.loop.judgement import at_rank

    cumulative = np.cumsum(counts)
    if cumulative[-1] <= 0:
        return None
    return at_rank([*LATENCY_BUCKETS, math.inf], cumulative, 0.95 * float(cumulative[-1]))


def _bucket_counts(seconds: np.ndarray) -> np.ndarray:
    positions = [bisect.bisect_left(LATENCY_BUCKETS, s) for s in seconds]
    return np.bincount(positions, minlength=len(LATENCY_BUCKETS) + 1).astype(float)


@dataclass(frozen=True)
class Canary:
    """What a canary answers (probabilities over the pool's customers) and how it serves."""

    kind: str
    proba: np.ndarray
    cost: float
    """Its model-call cost relative to the stable version's."""
    failing: float
    """Share of records it fails on beyond the bad inputs both sides fail on."""
    expected_psi: float
    better: bool


class Trial:
    """One seed: a champion, the good candidate and the bad ones, over one pool of customers."""

    def __init__(self, params: Params, seed: int, root: Path) -> None:
        from pipeline.backtest.replay import JUDGE_ROWS, Loop, World, _frame

        self.params, self.seed = params, seed
        world = World(1.0)
        loop = Loop(params, _drift_scenario(), seed, root / "loop")
        loop.promote(loop.candidate_or_fail(loop.train(-1, World(0.0))), -1, World(0.0))
        candidate = loop.train(0, world)
        self.loop, self.schema = loop, loop.schema
        self.champion = loop.serving
        loop.promote(loop.candidate_or_fail(candidate), 0, world)
        self.admitted = loop.canary is not None
        good = loop.canary or loop.candidate_or_fail(candidate)
        pool = _frame(world, POOL_ROWS, seed * 31 + 7)
        self.pool = pool
        self.target = pool[self.schema.target].astype(str).to_numpy()
        self.features = pool[self.schema.feature_names]
        self.classes = [str(c) for c in self.champion.model.classes_]
        self.stable_proba = self.champion.model.predict_proba(self.features)
        good_proba = good.model.predict_proba(self.features)
        fresh = _frame(world, JUDGE_ROWS, seed * 7919)
        better = _gain(good.model, self.champion.model, fresh, self.schema, loop.metric) > 0
        scrambled = good_proba[np.random.default_rng(seed).permutation(len(pool))]
        half_scrambled = good_proba.copy()
        half = np.random.default_rng(seed).permutation(len(pool))[: len(pool) // 2]
        half_scrambled[half] = good_proba[np.random.default_rng(seed + 1).permutation(half)]
        self.canaries = {
            "good": Canary("good", good_proba, 1.0, 0.0, good.expected_psi, better),
            "errors": Canary("errors", good_proba, 1.0, FAILING_SHARE, good.expected_psi, False),
            "latency": Canary("latency", good_proba, 10.0, 0.0, good.expected_psi, False),
            "predictions": Canary("predictions", _shifted(good_proba), 1.0, 0.0, good.expected_psi, False),
            "quality": Canary("quality", scrambled, 1.0, 0.0, good.expected_psi, False),
            "quality-half": Canary("quality-half", half_scrambled, 1.0, 0.0, good.expected_psi, False),
        }

    def run(self) -> SeedTrials:
        found = SeedTrials(self.seed, admitted=self.admitted)
        kinds = ["good"] * (GOOD_ROLLOUTS if self.admitted else 0) + [*BAD_KINDS, *MEASURED_KINDS]
        for number, kind in enumerate(kinds):
            found.rollouts.append(
                self.roll_out(self.canaries[kind], np.random.default_rng([self.seed, number]))
            )
        return found

    def roll_out(self, canary: Canary, rng: np.random.Generator) -> Rollout:
        """Minute by minute until the decider's judge promotes or rolls back."""
        from core.quality import evaluate
        from core.rollout import in_canary
        from pipeline.loop.judgement import Evidence, judge, prediction_shift

        params, rollout = self.params, self.params.rollout
        rate, bad_inputs, stable_cost = (
            rng.uniform(150, 400),
            rng.uniform(0.0, 0.01),
            rng.uniform(0.001, 0.004),
        )
        relative = rng.uniform(0.5, 1.5) if canary.kind == "good" else canary.cost
        version = f"{self.seed}-{canary.kind}"
        sides = {
            "champion": Answering("champion", "stable", self.stable_proba, stable_cost, bad_inputs),
            "canary": Answering(
                "canary", version, canary.proba, stable_cost * relative, bad_inputs + canary.failing
            ),
        }
        for minute in range(1, int(rollout.max_minutes) + 1):
            burst = rng.random()
            count = rng.poisson(rate * (3.0 if burst < 0.1 else 0.3 if burst > 0.9 else 1.0))
            load = rng.lognormal(0.0, 0.3) * (4.0 if rng.random() < 0.1 else 1.0)
            rows = rng.integers(0, len(self.pool), count)
            entity = rng.integers(0, 10**9, count)
            on_canary = np.array([in_canary(f"e{e}", version, rollout.share) for e in entity], dtype=bool)
            sides["champion"].answer(rows[~on_canary], minute, load, rng)
            sides["canary"].answer(rows[on_canary], minute, load, rng)
            logged = {name: side.logged(minute, self.classes, self.target) for name, side in sides.items()}
            found = evaluate(
                logged["canary"] + logged["champion"],
                self.schema.task,
                self.classes,
                params.quality,
                params.promote,
                {},
            )
            quality = {q.variant: q for q in found}
            evidence = Evidence(
                canary=sides["canary"].side(
                    logged["canary"], quality.get("canary"), self.schema.task, self.classes, self.loop.metric
                ),
                stable=sides["champion"].side(
                    logged["champion"],
                    quality.get("champion"),
                    self.schema.task,
                    self.classes,
                    self.loop.metric,
                ),
                psi=prediction_shift(logged["champion"], logged["canary"], self.schema.task),
                psi_rows=(len(logged["canary"]), len(logged["champion"])),
                elapsed_seconds=minute * 60.0,
                metric=self.loop.metric,
            )
            verdict = judge(
                evidence,
                rollout.slo,
                rollout.min_requests,
                rollout.max_minutes,
                params.quality.min_labelled,
                canary.expected_psi,
            )
            if verdict.action != "wait":
                return Rollout(canary.kind, self.seed, verdict.action, verdict.reason, minute, canary.better)
        raise RuntimeError("the decider neither promoted nor rolled back at rollout.max_minutes")


class Answering:
    """One side of a rollout as Prometheus and the prediction log see it: records, failures, the
    model calls' histogram and the logged answers with their outcomes' arrival minute."""

    def __init__(self, variant: str, version: str, proba: np.ndarray, cost: float, failing: float) -> None:
        self.variant, self.version, self.proba, self.cost, self.failing = (
            variant,
            version,
            proba,
            cost,
            failing,
        )
        self.records = self.failures = 0.0
        self.buckets = np.zeros(len(LATENCY_BUCKETS) + 1)
        self.answers: list[tuple[int, float, int]] = []  # pool row, minute, outcome's minute (-1: never)

    def answer(self, rows: np.ndarray, minute: int, load: float, rng: np.random.Generator) -> None:
        broken = rng.random(len(rows)) < self.failing
        self.failures += float(broken.sum())
        answered = rows[~broken]
        self.records += float(len(answered))
        seconds = self.cost * load * rng.lognormal(0.0, 0.5, len(answered))
        seconds += np.where(rng.random(len(answered)) < 0.005, rng.uniform(0.005, 0.05, len(answered)), 0.0)
        self.buckets += _bucket_counts(seconds)
        arrives = np.where(rng.random(len(answered)) < 0.8, minute + rng.integers(2, 21, len(answered)), -1)
        self.answers += [(int(r), float(minute), int(a)) for r, a in zip(answered, arrives, strict=True)]

    def logged(self, now: int, classes: list[str], target: np.ndarray) -> list[Any]:
        """The prediction log's rows of this side at minute `now`."""
        from core.predictions.rows import LoggedPrediction

        rows = []
        for row, minute, arrives in self.answers:
            p = self.proba[row]
            labelled = 0 <= arrives <= now
            rows.append(
                LoggedPrediction(
                    minute,
                    self.version,
                    self.variant,
                    classes[int(p.argmax())],
                    dict(zip(classes, map(float, p), strict=True)),
                    target[row] if labelled else None,
                    float(arrives) if labelled else None,
                )
            )
        return rows

    def side(self, logged: list[Any], quality: Any, task: str, classes: list[str], metric: str) -> Any:
        """The decider's Side: what Prometheus gives it, and live quality from the log."""
        from pipeline.loop.judgement import Side, quality_spread

        value = None if quality is None else quality.realized.get(metric)
        return Side(
            records=self.records,
            failures=self.failures,
            p95_seconds=histogram_p95(self.buckets),
            latency_buckets=tuple(
                zip((*LATENCY_BUCKETS, math.inf), np.cumsum(self.buckets).tolist(), strict=True)
            ),
            quality=value,
            labelled=0 if quality is None else quality.labelled,
            quality_spread=0.0 if value is None else quality_spread(logged, task, classes, metric),
        )


def _drift_scenario() -> Any:
    from pipeline.backtest.replay import SCENARIOS

    return SCENARIOS["drift"]


def _gain(new: Any, old: Any, frame: pd.DataFrame, schema: Any, metric: str) -> float:
    from core.params import HIGHER_IS_BETTER
    from pipeline.backtest.replay import _primary

    gain = _primary(new, frame, schema, metric) - _primary(old, frame, schema, metric)
    return gain if HIGHER_IS_BETTER[metric] else -gain


def _shifted(proba: np.ndarray) -> np.ndarray:
    """The positive class's probability moved by SHIFTED_LOGIT on the logit scale."""
    positive = np.clip(proba[:, -1], 1e-9, 1 - 1e-9)
    moved = 1.0 / (1.0 + np.exp(-(np.log(positive / (1 - positive)) + SHIFTED_LOGIT)))
    out = proba.copy()
    out[:, -1] = moved
    out[:, 0] = 1.0 - moved
    return out


def run_trial(params: Params, seed: int) -> SeedTrials:
    if params.data.task != "classification":
        raise ValueError("the canary trial replays the simulator's churn classification")
    with tempfile.TemporaryDirectory(prefix="bitloop-canaries-") as scratch:
        return Trial(params, seed, Path(scratch)).run()


def trials(params: Params, seeds: int, first_seed: int, workers: int = 2) -> list[SeedTrials]:
    found = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        seeds_run = [first_seed + k for k in range(seeds)]
        for seed, result in zip(seeds_run, pool.map(run_trial, [params] * seeds, seeds_run), strict=True):
            log.info("canary trial seed done", extra={"seed": seed, "rollouts": len(result.rollouts)})
            found.append(result)
    return found


def summarise_trials(results: list[SeedTrials]) -> dict[str, Any]:
    """The figures `--json` prints for the canaries: per kind, rollouts and rollbacks; for the good
    canary the false rollbacks (better on fresh customers, rolled back) and their reasons."""
    rollouts = [r for s in results for r in s.rollouts]
    good = [r for r in rollouts if r.kind == "good"]
    false = [r for r in good if r.action == "rollback" and r.better]
    summary: dict[str, Any] = {
        "scenario": "canaries",
        "seeds": len(results),
        "admitted": sum(s.admitted for s in results),
        "good_rollouts": len(good),
        "good_better": sum(r.better for r in good),
        "false_rollbacks": len(false),
        "false_rollback_rate": len(false) / max(1, sum(r.better for r in good)),
        "false_rollback_reasons": sorted({slo for r in false for slo in r.failed_slos or ["undecided"]}),
        "good_minutes": sorted(r.minutes for r in good if r.action == "promote"),
    }
    for kind in (*BAD_KINDS, *MEASURED_KINDS):
        bad = [r for r in rollouts if r.kind == kind]
        summary[f"{kind}_rollouts"] = len(bad)
        summary[f"{kind}_caught"] = sum(r.action == "rollback" for r in bad)
        summary[f"{kind}_caught_by"] = sorted({slo for r in bad for slo in r.failed_slos or ["undecided"]})
    return summary


def trial_verdicts(summary: dict[str, Any]) -> list[str]:
    """Each canary goal missed, in words: at most 5% of good canaries rolled back, every bad one
    caught."""
    missed = []
    if summary["false_rollback_rate"] > 0.05:
        missed.append(
            f"{summary['false_rollbacks']} of {summary['good_better']} good canaries rolled back "
            f"({', '.join(summary['false_rollback_reasons'])})"
        )
    for kind in BAD_KINDS:
        if summary[f"{kind}_caught"] < summary[f"{kind}_rollouts"]:
            missed.append(f"{kind}: {summary[f'{kind}_caught']} of {summary[f'{kind}_rollouts']} caught")
    if summary["admitted"] < summary["seeds"]:
        missed.append(
            f"promotion admitted the good candidate in {summary['admitted']} of {summary['seeds']} seeds"
        )
    return missed


def trial_table(summary: dict[str, Any]) -> str:
    lines = [
        f"{'canary':<14}{'rollouts':>9}{'rolled back':>12}  by",
        "-" * 48,
        f"{'good':<14}{summary['good_rollouts']:>9}{summary['false_rollbacks']:>12}  "
        f"{', '.join(summary['false_rollback_reasons']) or '-'}",
    ]
    for kind in (*BAD_KINDS, *MEASURED_KINDS):
        lines.append(
            f"{kind:<14}{summary[f'{kind}_rollouts']:>9}{summary[f'{kind}_caught']:>12}  "
            f"{', '.join(summary[f'{kind}_caught_by']) or '-'}"
        )
    missed = trial_verdicts(summary)
    lines.append("verdict: " + ("met" if not missed else "not met: " + "; ".join(missed)))
    return "\n".join(lines)
