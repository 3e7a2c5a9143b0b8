"""A backtest of the whole loop: simulated histories replayed step by step through the real code.

Each step is one period of `retrain.cooldown_hours`. The world is where the scenario puts it; live
customers drawn from it are answered by the champion (and, while a rollout runs, by the canary for
its share of entities, `core.rollout.in_canary`); their outcomes reach the loop `delay` steps
later. At the end of the step a canary is judged by the rollout decider's `judge` on what the step
showed (its records, the shift of its predictions, live quality where outcomes arrived), then the
monitors look at the champion: the drift of its live inputs against its reference profile
(`core.drift.detect`) and its live quality against its limits (`core.quality.evaluate`).
A signal the retraining policy lets through (`pipeline.loop.policy.held_back`, in simulated time) runs
training as the DAG does: a batch of the world as it is now is ingested into a real workspace,
validated against the data contract, split, cut to the training window and trained
(`pipeline.stages.ingest`, `validate`, `split`, `train`); each candidate is scored (`core.model_metrics`),
the best is calibrated and compared with the champion by promotion's own rule on the newest rows
(`pipeline.stages.promote.decide`, `recent_holdout`), and a winner becomes the next step's canary.

Nothing here needs Airflow or MLflow: the registry's part is three variables (champion, canary,
last trigger), everything that judges is the code the stack runs. Truth the loop never sees is
used only to measure it: each step the champion's quality on the step's customers with their true
outcomes, and at each promotion and rollback both models on 20,000 fresh customers of the world.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.params import HIGHER_IS_BETTER, Params

log = logging.getLogger(__name__)

STEPS = 12
CHANGE_AT = 3
"""The step at which a scenario's world first moves (steps 0-2 show the loop at rest)."""
LIVE_ROWS = 8000
"""Customers answered per step. At 5,000 a step a 10% canary reaches its 500 records only about
half the time (binomial), and one that did not was rolled back undecided at `rollout.max_minutes`."""
JUDGE_ROWS = 20_000
"""Fresh customers on which a promoted or rolled-back model is compared with the one it would
replace (truth the loop never sees)."""
START = datetime(2030, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class World:
    drift: float
    concept: float | None = None
    """None: the relation follows the drift (the simulator's, and the data source's, default)."""


@dataclass(frozen=True)
class Scenario:
    name: str
    world: Callable[[int], World]
    delay: int = 0
    """Steps until an outcome reaches the loop."""
    bad_batch: int | None = None
    """The retrain (counted from 1, after the first training) whose batch arrives corrupt."""
    description: str = ""


def _step(before: World, after: World, at: int = CHANGE_AT) -> Callable[[int], World]:
    return lambda step: before if step < at else after


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("stable", lambda step: World(0.0), description="noise only"),
        Scenario("drift", _step(World(0.0), World(1.0)), description="the population moves at step 3"),
        Scenario(
            "concept",
            _step(World(0.0, 0.0), World(0.0, 1.0)),
            description="the relation turns at step 3, inputs stay",
        ),
        Scenario(
            "drift-then-concept",
            lambda step: World(0.0) if step < CHANGE_AT else World(1.0) if step < 7 else World(1.0, 0.0),
            description="the demos' order: drift at step 3, the concept turns back at step 7",
        ),
        Scenario(
            "gradual",
            lambda step: World(min(1.0, max(0.0, (step - CHANGE_AT + 1) * 0.2))),
            description="the population moves by 0.2 a step from step 3",
        ),
        Scenario(
            "recurring",
            lambda step: World(1.0 if (step // CHANGE_AT) % 2 else 0.0),
            description="the world goes back and forth every 3 steps",
        ),
        Scenario(
            "bad-batch",
            _step(World(0.0), World(1.0)),
            bad_batch=1,
            description="drift at step 3; the first retrain's batch is corrupt",
        ),
        Scenario(
            "slow-labels",
            _step(World(0.0, 0.0), World(0.0, 1.0)),
            delay=2,
            description="the concept turns at step 3; outcomes take 2 steps, the cooldown 1",
        ),
    )
}


@dataclass
class Served:
    """A model the loop serves, with what its version carries in the registry."""

    version: int
    model: Any
    holdout: dict[str, float]
    profile: Any
    calibration: Any
    expected_psi: float = 0.0


@dataclass
class SeedResult:
    scenario: str
    seed: int
    live: list[float] = field(default_factory=list)
    """The champion's realized promote.metric each step, on the step's customers."""
    estimated: list[float] = field(default_factory=list)
    limit: list[float] = field(default_factory=list)
    retrains: list[int] = field(default_factory=list)
    """Steps at which training ran."""
    promotions: list[int] = field(default_factory=list)
    rollbacks: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    """Steps whose training batch validation refused."""
    worse_promotions: int = 0
    false_rollbacks: int = 0
    events: list[str] = field(default_factory=list)

    @property
    def below(self) -> list[bool]:
        return [v < lim for v, lim in zip(self.live, self.limit, strict=True)]

    @property
    def recovered(self) -> bool:
        """Live quality within its limit at the end, with the loop's retrains since the last time
        it fell below it not beyond the training window's bound (checked by the caller)."""
        return not self.below[-1]


def _frame(world: World, rows: int, seed: int) -> pd.DataFrame:
    from pipeline.data.sources.simulated import simulate_churn

    return simulate_churn(rows, seed, world.drift, world.concept)


def _primary(model: Any, frame: pd.DataFrame, schema: Any, metric: str) -> float:
    from core.model_metrics import score

    return score(model, frame, schema)[metric]


def _corrupt(workspace: Any) -> None:
    """The newest raw batch arrives broken: a third of a numeric column turned to text."""
    from pipeline.data.store import read_manifest

    batch = workspace.raw_dir / read_manifest(workspace.raw_dir)[-1]["file"]
    frame = pd.read_parquet(batch)
    broken = frame["tenure_months"].astype(object)
    broken.iloc[: len(frame) // 3] = "unknown"
    frame.assign(tenure_months=broken.astype(str)).to_parquet(batch, index=False)


class Loop:
    """One seed of one scenario: the served state and the stages on a scratch workspace."""

    def __init__(self, params: Params, scenario: Scenario, seed: int, root: Path) -> None:
        from pipeline.workspace import Workspace

        self.params, self.scenario, self.seed = params, scenario, seed
        self.workspace = Workspace(root, params.model.name)
        self.metric = params.promote.primary_metric(params.data.task)
        self.champion: Served | None = None
        self.canary: Served | None = None
        self.canary_since = 0
        self.versions = 0
        self.last_trigger: dict[str, Any] | None = None
        self.result = SeedResult(scenario.name, seed)
        self.log: list[Any] = []  # LoggedPrediction rows the monitors read

    @property
    def serving(self) -> Served:
        if self.champion is None:
            raise RuntimeError("no champion: the first training run registered nothing")
        return self.champion

    # --- training, as the training DAG runs it ---------------------------------------------------

    def train(self, step: int, world: World) -> Served | None:
        """Ingest a batch of `world`, validate, split, train, score; the best candidate, or None when
        validation refused the batch (withdrawn, as the runbook says, for the next run)."""
        from core.calibration import fit_calibration
        from core.model_metrics import best_candidate, floor_failures, score
        from core.profile import ReferenceProfile
        from core.schema import DatasetSchema
        from pipeline.data.store import read_manifest, withdraw_batch
        from pipeline.stages.candidates import load_candidate
        from pipeline.stages.ingest import ingest
        from pipeline.stages.split import split
        from pipeline.stages.train import train
        from pipeline.stages.validate import ValidationFailed, validate
        from pipeline.workspace import read_json

        batch_seed = self.seed * 1000 + step
        ingest(self.params, self.workspace, seed=batch_seed, drift=world.drift, concept=world.concept)
        if self.scenario.bad_batch is not None and self.scenario.bad_batch == len(self.result.retrains):
            _corrupt(self.workspace)
        try:
            validate(self.params, self.workspace)
        except ValidationFailed:
            newest = read_manifest(self.workspace.raw_dir)[-1]["file"]
            withdraw_batch(self.workspace, newest, "corrupt batch (backtest)")
            self.result.refused.append(step)
            self.result.events.append(f"step {step}: validation refused the batch; withdrawn")
            return None
        split(self.params.split, self.workspace)
        train(self.params, self.workspace)
        schema = DatasetSchema.read(self.workspace.schema_file)
        test = pd.read_parquet(self.workspace.test_file)
        models = {n: load_candidate(self.workspace.candidate_file(n)) for n in self.params.train.candidates}
        scores = {n: score(m, test, schema) for n, m in models.items()}
        best = best_candidate(scores, self.metric)
        if floor_failures(scores[best], self.params.promote.floors.get(schema.task, {})):
            return None
        model = models[best]
        proba = model.predict_proba(test[schema.feature_names])
        self.schema = schema
        self.versions += 1
        return Served(
            version=self.versions,
            model=model,
            holdout=scores[best],
            profile=ReferenceProfile.model_validate(read_json(self.workspace.profile_file)),
            calibration=fit_calibration(test[schema.target], proba, list(model.classes_)),
        )

    @staticmethod
    def candidate_or_fail(candidate: Served | None) -> Served:
        if candidate is None:
            raise RuntimeError("the first batch gave no candidate above the floors")
        return candidate

    def promote(self, candidate: Served, step: int, world: World) -> None:
        """promote's rule: floors, then a gain of promote.margin over the champion on the newest rows;
        a winner over a serving champion becomes the canary (rollout.share > 0)."""
        from core.model_metrics import score
        from pipeline.stages.promote import decide, expected_shift, recent_holdout

        if self.champion is None:
            self.champion = candidate
            return
        rows, _ = recent_holdout(pd.read_parquet(self.workspace.test_file), self.params.promote.recent_rows)
        floors = self.params.promote.floors.get(self.schema.task, {})
        decision = decide(
            score(candidate.model, rows, self.schema),
            score(self.champion.model, rows, self.schema),
            self.metric,
            self.params.promote.margin,
            floors,
        )
        if not decision.promote:
            self.result.events.append(f"step {step}: v{candidate.version} kept out: {decision.reason}")
            return
        rollout = self.params.rollout
        candidate.expected_psi = expected_shift(
            self.champion.model, candidate.model, rows, self.schema, rollout.share, rollout.min_requests
        )
        if self.params.rollout.share <= 0:
            self._replace(candidate, step, world)
            return
        self.canary, self.canary_since = candidate, step + 1
        self.result.events.append(f"step {step}: v{candidate.version} becomes the canary ({decision.reason})")

    def _better(self, new: Served, old: Served, world: World, step: int) -> bool:
        fresh = _frame(world, JUDGE_ROWS, self.seed * 7919 + step)
        gain = _primary(new.model, fresh, self.schema, self.metric) - _primary(
            old.model, fresh, self.schema, self.metric
        )
        return gain > 0 if HIGHER_IS_BETTER[self.metric] else gain < 0

    def _replace(self, new: Served, step: int, world: World) -> None:
        if not self._better(new, self.serving, world, step):
            self.result.worse_promotions += 1
            self.result.events.append(f"step {step}: v{new.version} promoted, worse on the newest data")
        self.champion = new
        self.result.promotions.append(step)

    # --- a step ---------------------------------------------------------------------------------

    def serve(self, step: int, world: World) -> pd.DataFrame:
        """The step's customers answered, logged with their outcome's arrival step; the champion's
        true quality, estimate and limit recorded."""
        from core.predictions.rows import LoggedPrediction
        from core.quality import estimate, limits
        from core.rollout import in_canary

        champion = self.serving
        live = _frame(world, LIVE_ROWS, self.seed * 100_003 + step)
        features = live[self.schema.feature_names]
        target = live[self.schema.target]
        ids = [f"s{step}-{i}" for i in range(len(live))]
        sides = {"champion": (champion, np.ones(len(live), dtype=bool))}
        if self.canary is not None:
            share, version = self.params.rollout.share, str(self.canary.version)
            on_canary = np.array([in_canary(i, version, share) for i in ids])
            sides = {"champion": (champion, ~on_canary), "canary": (self.canary, on_canary)}
        arrives = step + self.scenario.delay
        for variant, (served, mask) in sides.items():
            if not mask.any():
                continue
            proba = served.model.predict_proba(features[mask])
            classes = [str(c) for c in served.model.classes_]
            predicted = served.model.classes_[proba.argmax(axis=1)]
            for p, row, y in zip(predicted, proba, target[mask], strict=True):
                self.log.append(
                    LoggedPrediction(
                        float(step),
                        str(served.version),
                        variant,
                        str(p),
                        dict(zip(classes, map(float, row), strict=True)),
                        str(y),
                        float(arrives),
                    )
                )
        realized = _primary(champion.model, live, self.schema, self.metric)
        proba = champion.model.predict_proba(features)
        classes = list(champion.model.classes_)
        guess = estimate(list(champion.model.predict(features)), champion.calibration.apply(proba), classes)
        found = [
            lim.value
            for lim in limits(
                self.schema.task,
                str(champion.version),
                champion.holdout,
                self.params.quality,
                self.params.promote,
            )
            if lim.metric == self.metric
        ]
        self.result.live.append(realized)
        self.result.estimated.append(guess.get(self.metric, math.nan))
        self.result.limit.append(max(found) if HIGHER_IS_BETTER[self.metric] else min(found))
        return live

    def arrived(self, step: int, variant: str, version: int, since: int) -> list[Any]:
        """Rows of one side logged since `since` whose outcomes reached the loop by `step`; the rest
        are logged but unlabelled."""
        from core.predictions.rows import LoggedPrediction

        rows = [r for r in self.log if r.variant == variant and r.version == str(version) and r.ts >= since]
        return [r if (r.received_at or 0) <= step else LoggedPrediction(*r[:5]) for r in rows]

    def judge_canary(self, step: int, world: World) -> None:
        from core.quality import evaluate
        from pipeline.loop.judgement import Evidence, Side, judge, prediction_shift, quality_spread

        canary, stable = self.canary, self.serving
        if canary is None:
            return
        canary_rows = self.arrived(step, "canary", canary.version, self.canary_since)
        stable_rows = self.arrived(step, "champion", stable.version, self.canary_since)
        classes = list(self.schema.classes)
        quality = {
            q.variant: q
            for q in evaluate(
                canary_rows + stable_rows,
                self.schema.task,
                classes,
                self.params.quality,
                self.params.promote,
                {},
            )
        }

        def side(variant: str, rows: list[Any]) -> Side:
            found = quality.get(variant)
            value = None if found is None else found.realized.get(self.metric)
            return Side(
                records=float(len(rows)),
                quality=value,
                labelled=0 if found is None else found.labelled,
                quality_spread=0.0
                if value is None
                else quality_spread(rows, self.schema.task, classes, self.metric),
            )

        evidence = Evidence(
            canary=side("canary", canary_rows),
            stable=side("champion", stable_rows),
            psi=prediction_shift(stable_rows, canary_rows, self.schema.task),
            psi_rows=(len(canary_rows), len(stable_rows)),
            elapsed_seconds=(step + 1 - self.canary_since) * self.params.retrain.cooldown_hours * 3600,
            metric=self.metric,
            timed="unconfigured",  # no model-call times in a backtest: errors and latency are skipped
        )
        rollout = self.params.rollout
        verdict = judge(
            evidence,
            rollout.slo,
            rollout.min_requests,
            rollout.max_minutes,
            self.params.quality.min_labelled,
            canary.expected_psi,
        )
        if verdict.action == "wait":
            return
        if verdict.action == "promote":
            self.result.events.append(f"step {step}: canary v{canary.version} promoted")
            self._replace(canary, step, world)
        else:
            self.result.rollbacks.append(step)
            if self._better(canary, stable, world, step):
                self.result.false_rollbacks += 1
            self.result.events.append(f"step {step}: canary v{canary.version} rolled back: {verdict.reason}")
        self.canary = None

    def signal(self, step: int, live: pd.DataFrame) -> str | None:
        """What the monitors find on the champion at the end of the step."""
        from core.drift import detect
        from core.quality import evaluate

        champion = self.serving
        report = detect(champion.profile, live[self.schema.feature_names], self.params.drift)
        if report.status == "drift":
            return "drift"
        rows = self.arrived(step, "champion", champion.version, max(0, step - 1 - self.scenario.delay))
        found = evaluate(
            rows,
            self.schema.task,
            list(self.schema.classes),
            self.params.quality,
            self.params.promote,
            {str(champion.version): champion.holdout},
        )
        return "quality" if any(q.breaches for q in found) else None

    def run(self) -> SeedResult:
        from pipeline.loop.policy import held_back

        first = self.candidate_or_fail(self.train(-1, self.scenario.world(0)))  # what `make up` leaves
        self.promote(first, -1, self.scenario.world(0))
        for step in range(STEPS):
            world = self.scenario.world(step)
            live = self.serve(step, world)
            if self.canary is not None:
                self.judge_canary(step, world)
            if self.canary is not None:
                continue  # still gathering evidence
            signal = self.signal(step, live)
            if signal is None:
                continue
            now = START + timedelta(hours=step * self.params.retrain.cooldown_hours)
            verdict = held_back(self.params.retrain, signal, self.last_trigger, now)  # type: ignore[arg-type]
            if verdict is not None:
                self.result.events.append(f"step {step}: {signal} held back: {verdict['reason']}")
                continue
            self.last_trigger = {"signal": signal, "at": now.isoformat()}
            self.result.retrains.append(step)
            self.result.events.append(f"step {step}: {signal} starts training")
            candidate = self.train(step, world)
            if candidate is not None:
                self.promote(candidate, step, world)
        return self.result


def run_seed(params: Params, scenario: str, seed: int) -> SeedResult:
    """One seed of one scenario, in a scratch workspace that is removed after."""
    with tempfile.TemporaryDirectory(prefix="bitloop-backtest-") as scratch:
        return Loop(params, SCENARIOS[scenario], seed, Path(scratch)).run()


def last_change(scenario: Scenario) -> int:
    """The last step at which the scenario's world moves."""
    moved = [step for step in range(1, STEPS) if scenario.world(step) != scenario.world(step - 1)]
    return max(moved, default=0)


def summarise(params: Params, results: list[SeedResult]) -> dict[str, Any]:
    """The figures of one scenario over its seeds (`--json` prints this)."""
    window = params.retrain.window_batches
    scenario = SCENARIOS[results[0].scenario]
    changed = last_change(scenario)

    def recovered(r: SeedResult) -> bool:
        if scenario.name == "stable":
            return not any(r.below)
        since = [step for step in r.retrains if step >= changed and step not in r.refused]
        return r.recovered and (window is None or len(since) <= window)

    return {
        "scenario": scenario.name,
        "seeds": len(results),
        "recovered": sum(recovered(r) for r in results),
        "retrains": [len(r.retrains) for r in results],
        "steps_below_limit": [sum(r.below) for r in results],
        "false_retrains": sum(len(r.retrains) for r in results) if scenario.name == "stable" else 0,
        "worse_promotions": sum(r.worse_promotions for r in results),
        "false_rollbacks": sum(r.false_rollbacks for r in results),
        "seeds_with_false_rollbacks": sum(r.false_rollbacks > 0 for r in results),
        "rollbacks": [len(r.rollbacks) for r in results],
    }


def backtest(
    params: Params, scenarios: list[str], seeds: int, first_seed: int, workers: int = 2
) -> dict[str, list[SeedResult]]:
    """Every (scenario, seed), `workers` at a time (each trains single-threaded)."""
    jobs = [(s, first_seed + k) for s in scenarios for k in range(seeds)]
    found: dict[str, list[SeedResult]] = {s: [] for s in scenarios}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for (scenario, seed), result in zip(
            jobs, pool.map(run_seed, [params] * len(jobs), *zip(*jobs, strict=True)), strict=True
        ):
            log.info(
                "backtest seed done",
                extra={"scenario": scenario, "seed": seed, "retrains": len(result.retrains)},
            )
            found[scenario].append(result)
    return found
