"""Gate the best registered candidate against @champion on the same holdout, and rollback.

Aliases: @champion is served; @challenger is the last candidate that passed the floors but did
not win; @previous is the champion before the last promotion (one-step rollback). Moving
@champion is a single registry call, so the switch is atomic; re-running is idempotent.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from core.errors import BitloopError
from core.model_metrics import floor_failures, score
from core.params import HIGHER_IS_BETTER, Params
from core.registry import (
    ALIASES,
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    TAG,
    Tags,
    alias_version,
    connect,
    download_model,
    run_schema,
)
from core.rollout import Terms, score_shift, shift_class, start
from core.schema import BATCH_COLUMN, DatasetSchema
from core.serialization import load_sklearn_model
from core.settings import PipelineSettings
from pipeline.stages.reports import (
    CanarySeen,
    CandidateSeen,
    ChampionSeen,
    Decision,
    PromotionReport,
    Registration,
)
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)


class SchemaMismatch(BitloopError, RuntimeError):
    """The candidate's task or features differ from the champion's: comparing them is meaningless."""


class RollbackError(BitloopError, RuntimeError):
    """There is nothing to roll back to."""


def decide(
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    metric: str,
    margin: float,
    floors: dict[str, float],
) -> Decision:
    """Promote only above the floors and, when there is a champion, better by at least `margin`."""
    value = candidate[metric]
    failures = floor_failures(candidate, floors)
    if failures:
        return Decision(False, "below the floors: " + "; ".join(failures), metric, value, None)
    if champion is None:
        return Decision(True, "no champion yet and the floors pass", metric, value, None)
    current = champion[metric]
    gain = value - current if HIGHER_IS_BETTER[metric] else current - value
    if current != current:  # a champion that cannot be scored (NaN) loses to any valid candidate
        return Decision(True, "the champion cannot be scored on this holdout", metric, value, current)
    if gain >= margin and gain > 0:
        return Decision(
            True, f"beats the champion by {gain:.4f} {metric} (margin {margin})", metric, value, current
        )
    return Decision(
        False,
        f"does not beat the champion by the margin: gain {gain:+.4f} {metric} < {margin}",
        metric,
        value,
        current,
    )


def recent_holdout(test: pd.DataFrame, min_rows: int | None) -> tuple[pd.DataFrame, str]:
    """The holdout rows candidate and champion are compared on, and those rows in words: the rows of
    the newest batches, whole batches newest first until at least `min_rows` (None: all of them).

    Why not the whole holdout: after a drift or a concept change the training window mixes the old
    world and the new one for up to `retrain.window_batches` retrains, and so does its holdout. On it
    the champion, which fits the old part, can beat a candidate that has learned the new part, and
    the loop then keeps a model the world has left (seen: a concept change outlived two retrains).
    The newest batch is the world as it is now. Both models are scored on exactly these rows.
    """
    whole = f"the whole holdout ({len(test)} rows)"
    if min_rows is None or BATCH_COLUMN not in test.columns or test.empty:
        return test, whole
    newest_first = test[BATCH_COLUMN].value_counts().sort_index(ascending=False)
    taken: list[int] = []
    rows = 0
    for batch, count in newest_first.items():
        taken.append(int(cast("int", batch)))
        rows += int(count)
        if rows >= min_rows:
            break
    if len(taken) == len(newest_first):
        return test, whole
    recent = test[test[BATCH_COLUMN].isin(taken)].reset_index(drop=True)
    batches = "batch" if len(taken) == 1 else f"{len(taken)} batches"
    return recent, f"the holdout rows of the newest {batches} ({len(recent)} of {len(test)} rows)"


def _champion_schema(client: MlflowClient, champion: ModelVersion) -> DatasetSchema | None:
    """The champion's feature schema; None for a version logged without one (nothing to compare)."""
    if champion.run_id is None:
        return None
    try:
        return run_schema(client, champion.run_id)
    except (MlflowException, OSError):
        return None


def check_compatible(
    candidate: DatasetSchema, champion_schema: DatasetSchema | None, champion: ModelVersion, model_name: str
) -> None:
    """Raise SchemaMismatch when the candidate cannot be compared with the champion."""
    if champion_schema is None:
        return
    if champion_schema.fingerprint() == candidate.fingerprint():
        return

    raise SchemaMismatch(
        f"model {model_name!r} @champion (version {champion.version}) and this candidate differ: "
        f"{'; '.join(schema_differences(champion_schema, candidate))}. They cannot be compared on one "
        "holdout. Set a new model.name in params.yaml for this dataset, or run "
        "`python -m pipeline promote --allow-schema-change` to replace the champion deliberately."
    )


def schema_differences(old: DatasetSchema, new: DatasetSchema) -> list[str]:
    """Exactly what changes between two schemas' tasks, targets and features."""
    changes = []
    if old.task != new.task:
        changes.append(f"task {old.task} -> {new.task}")
    if old.target != new.target:
        changes.append(f"target {old.target!r} -> {new.target!r}")
    before = {f.name: f.kind for f in old.features}
    after = {f.name: f.kind for f in new.features}
    if removed := [n for n in before if n not in after]:
        changes.append(f"features only the champion has: {', '.join(removed)}")
    if added := [n for n in after if n not in before]:
        changes.append(f"features only the candidate has: {', '.join(added)}")
    changes += [
        f"{n} is {before[n]} for the champion, {after[n]} here"
        for n in after
        if before.get(n, after[n]) != after[n]
    ]
    return changes


def _load_version(client: MlflowClient, name: str, version: str) -> Any:
    with tempfile.TemporaryDirectory(prefix="bitloop-champion-") as scratch:
        return load_sklearn_model(download_model(client, name, version, Path(scratch)))


def _shift_scores(model: Any, test: pd.DataFrame, schema: DatasetSchema) -> np.ndarray:
    """What a rollout compares two versions' predictions by (`core.rollout.score_shift`)."""
    features = test[schema.feature_names]
    if schema.task == "regression":
        return np.asarray(model.predict(features), dtype=float)
    classes = [str(c) for c in model.classes_]
    return np.asarray(model.predict_proba(features)[:, classes.index(shift_class(classes))], dtype=float)


SHIFT_DRAWS = 200
"""Resamples behind the shift a canary is allowed."""


def expected_shift(
    champion: Any, candidate: Any, rows: pd.DataFrame, schema: DatasetSchema, share: float, min_requests: int
) -> float:
    """The shift of the candidate's predictions from the champion's that its canary may show live
    (plus rollout.slo.max_psi): the 95th percentile of the PSI the rollout would measure if its two
    sides scored customers like these holdout rows, at the sizes it first judges at (`min_requests`
    canary records, the stable side's share beside them).

    Why not the PSI on these rows as they are: live, each side scores other customers, the canary
    few of them, and the PSI of a small sample from a shifted distribution reads high (bins the
    stable side fills and the canary barely reaches). Measured by the backtest: a paired PSI of 0.50
    on the holdout came back 0.82 live for a good candidate, which was rolled back. Resampling the
    holdout's predictions to the live sizes reproduces that bias and that spread."""
    base, new = _shift_scores(champion, rows, schema), _shift_scores(candidate, rows, schema)
    canary_rows = max(1, min_requests)
    stable_rows = max(1, round(canary_rows * (1.0 - share) / share)) if share > 0 else len(base)
    rng = np.random.default_rng(0)  # the same holdout gives the same allowance
    shifts = [
        score_shift(rng.choice(base, stable_rows), rng.choice(new, canary_rows)) for _ in range(SHIFT_DRAWS)
    ]
    return float(np.quantile(shifts, 0.95))


def _tag(client: MlflowClient, name: str, version: str, values: dict[str, Any]) -> None:
    for key, value in values.items():
        client.set_model_version_tag(name, version, TAG + key, str(value))


@dataclass
class Comparison:
    """The candidate and the champion scored on the same recent holdout rows (`_compare`)."""

    candidate_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None = None
    champion_model: Any = None
    candidate_model: Any = None
    test: pd.DataFrame | None = None
    """The rows both were scored on; None when there was no comparison."""
    compared_rows: str | None = None
    """Those rows in words (`recent_holdout`)."""
    override: bool = False
    """The schema changed and --allow-schema-change replaces the champion without comparison."""


def promote(
    params: Params, workspace: Workspace, settings: PipelineSettings, allow_schema_change: bool = False
) -> dict[str, Any]:
    """Compare the best registered candidate with @champion on the current holdout and move aliases."""
    client = connect(settings)
    registered = Registration.read(workspace.registered_file)
    name, best, metric = registered.model_name, registered.best, registered.primary_metric
    schema = DatasetSchema.read(workspace.schema_file)
    floors = params.promote.floors.get(schema.task, {})
    data_version = registered.data_version.label
    report = PromotionReport(
        model_name=name, data_version=data_version, metric=metric, margin=params.promote.margin, floors=floors
    )

    if best is None:
        report.promoted = False
        report.reason = "no candidate passed the floors; nothing was registered"
        report.candidates = {n: c.floor_failures for n, c in registered.candidates.items()}
        log.warning(report.reason)
        return report.write(workspace.promotion_file)

    entry = registered.candidates[best]
    version = str(entry.version)
    champion = alias_version(client, name, CHAMPION)
    report.candidate = CandidateSeen(name=best, version=version, metrics=entry.metrics)
    if champion is not None and champion.version == version:
        report.promoted, report.already_champion = False, True
        report.reason = f"version {version} is already @champion"
        if entry.unchanged_since is not None:
            report.reason = (
                f"nothing new: the rows and the model are those of data version {entry.unchanged_since}, "
                f"whose {report.reason}"
            )
        report.champion = ChampionSeen(version=version)
        log.info(report.reason)
        return report.write(workspace.promotion_file)

    comparison = Comparison(candidate_metrics=entry.metrics)
    if champion is not None:
        comparison = _compare(
            client, params, workspace, schema, champion, version, entry.metrics, allow_schema_change
        )
        report.compared_rows = comparison.compared_rows
        report.champion = ChampionSeen(version=champion.version, metrics=comparison.champion_metrics)

    decision = decide(
        comparison.candidate_metrics, comparison.champion_metrics, metric, params.promote.margin, floors
    )
    if comparison.override and not floor_failures(entry.metrics, floors):
        allowed = "schema change allowed explicitly (--allow-schema-change)"
        decision = Decision(True, allowed, metric, entry.metrics[metric], None)
    report.promoted, report.reason, report.decision = decision.promote, decision.reason, decision
    _record_decision(client, report, decision, version, champion)
    _move_aliases(client, params, schema, name, version, champion, decision, comparison, report)
    return report.write(workspace.promotion_file)


def _record_decision(
    client: MlflowClient,
    report: PromotionReport,
    decision: Decision,
    version: str,
    champion: ModelVersion | None,
) -> None:
    """Tag the candidate's version with the decision, its reason and the figures it rests on."""
    metric = report.metric
    _tag(
        client,
        report.model_name,
        version,
        {
            "decision": "promoted" if decision.promote else "challenger",
            "decision_reason": decision.reason,
            "compared_on": report.data_version,
            "compared_rows": report.compared_rows or "none: no champion to compare with",
            "candidate_" + metric: f"{decision.candidate:.6f}",
            "champion_" + metric: "none" if decision.champion is None else f"{decision.champion:.6f}",
            "champion_version": champion.version if champion else "none",
        },
    )


def _compare(
    client: MlflowClient,
    params: Params,
    workspace: Workspace,
    schema: DatasetSchema,
    champion: ModelVersion,
    version: str,
    entry_metrics: dict[str, float],
    allow_schema_change: bool,
) -> Comparison:
    """Score the champion and the candidate on the holdout's recent rows; a champion of another
    schema raises SchemaMismatch, unless the change is allowed (then nothing is compared, and the
    candidate keeps the metrics it was registered with)."""
    name = champion.name
    try:
        check_compatible(schema, _champion_schema(client, champion), champion, name)
    except SchemaMismatch:
        if not allow_schema_change:
            raise
        log.warning("schema change allowed: the champion is replaced without comparison")
        return Comparison(candidate_metrics=entry_metrics, override=True)
    test, compared_rows = recent_holdout(pd.read_parquet(workspace.test_file), params.promote.recent_rows)
    champion_model = _load_version(client, name, champion.version)
    candidate_model = _load_version(client, name, version)
    return Comparison(
        candidate_metrics=score(candidate_model, test, schema),
        champion_metrics=score(champion_model, test, schema),
        champion_model=champion_model,
        candidate_model=candidate_model,
        test=test,
        compared_rows=compared_rows,
    )


def _move_aliases(
    client: MlflowClient,
    params: Params,
    schema: DatasetSchema,
    name: str,
    version: str,
    champion: ModelVersion | None,
    decision: Decision,
    comparison: Comparison,
    report: PromotionReport,
) -> None:
    """A winner becomes @canary (the rollout decider moves @champion later) or, with nothing to roll
    out against, @champion at once; a loser becomes @challenger."""
    if not decision.promote:
        client.set_registered_model_alias(name, CHALLENGER, version)
        log.info("kept the champion", extra={"model": name, "challenger": version, "reason": decision.reason})
        return
    challenger = alias_version(client, name, CHALLENGER)
    if challenger is not None and challenger.version == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    policy = params.rollout
    terms = Terms(policy.share, policy.min_requests, policy.max_minutes)
    if champion is not None and comparison.test is not None and terms.share > 0 and not comparison.override:
        expected = expected_shift(
            comparison.champion_model,
            comparison.candidate_model,
            comparison.test,
            schema,
            terms.share,
            terms.min_requests,
        )
        rollout = start(client, name, version, champion.version, replace(terms, expected_psi=expected))
        report.canary = CanarySeen(share=rollout.share, stable=rollout.stable)
        log.info("canary started", extra={"model": name, "version": version, "reason": decision.reason})
        return
    if champion is not None:
        client.set_registered_model_alias(name, PREVIOUS, champion.version)
    client.set_registered_model_alias(name, CHAMPION, version)
    log.info("promoted", extra={"model": name, "version": version, "reason": decision.reason})


def rollback(model_name: str, settings: PipelineSettings) -> dict[str, str]:
    """Point @champion back at @previous; the demoted version is tagged, @previous is consumed."""
    client = connect(settings)
    previous = alias_version(client, model_name, PREVIOUS)
    if previous is None:
        raise RollbackError(f"model {model_name!r} has no @previous version: nothing to roll back to")
    current = alias_version(client, model_name, CHAMPION)
    client.set_registered_model_alias(model_name, CHAMPION, previous.version)
    client.delete_registered_model_alias(model_name, PREVIOUS)
    if current is not None:
        _tag(
            client,
            model_name,
            current.version,
            {"decision": "rolled_back", "decision_reason": f"rolled back to version {previous.version}"},
        )
    _tag(client, model_name, previous.version, {"decision": "restored"})
    log.info(
        "rolled back",
        extra={
            "model": model_name,
            "champion": previous.version,
            "demoted": current.version if current else None,
        },
    )
    return {"champion": previous.version, "demoted": current.version if current else "none"}


def aliases(model_name: str, settings: PipelineSettings) -> dict[str, Any]:
    """The versions behind each alias, with the decision recorded on them."""
    client = connect(settings)
    shown: dict[str, Any] = {}
    for alias in ALIASES:
        mv = alias_version(client, model_name, alias)
        shown[alias] = (
            None
            if mv is None
            else {
                "version": mv.version,
                "run_id": mv.run_id,
                **{
                    k.removeprefix(TAG): v
                    for k, v in mv.tags.items()
                    if k in (Tags.CANDIDATE, Tags.DATA_VERSION, Tags.DECISION, Tags.DECISION_REASON)
                },
            }
        )
    return shown
