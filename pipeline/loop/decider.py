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
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, cast

from core.params import Params
from core.registry import CANARY, CHAMPION, PREVIOUS, TAG, Tags, alias_version, connect
from core.rollout import (
    Rollout,
    RolloutError,
    current,
    last_outcome,
    read_rollout,
)
from core.settings import PipelineSettings
from pipeline.loop.evidence import gather
from pipeline.loop.judgement import Evidence, Verdict, judge

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion


log = logging.getLogger(__name__)

RolloutEnd = Literal["promoted", "rolled_back", "aborted"]
ACTIONS: dict[RolloutEnd, str] = {"promoted": "promote", "rolled_back": "rollback", "aborted": "abort"}


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
