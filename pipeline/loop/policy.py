"""The retraining policy (`retrain` in params.yaml): whether a signal may start training now.

A signal starts training only when `retrain.triggers` lists it, and a drift or quality signal only
when no such signal started one in the last `retrain.cooldown_hours`. The last one is a tag of the
registered model (`bitloop.retrain.last_trigger`), so every worker and DAG sees the same, and a
signal that finds no champion starts nothing (there is nothing to retrain from). MLflow tags have
no compare-and-set, so the claim itself is a row in the prediction log that every monitor already
shares (`PredictionStore.claim_retrain`): of two signals at once, one starts training.
`python -m pipeline retrain-gate --signal drift` is the DAGs' call.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from core.params import Params, RetrainParams, Signal
from core.registry import CHAMPION, Tags, alias_version, connect
from core.settings import PipelineSettings

log = logging.getLogger(__name__)
COOLED = ("drift", "quality")  # the schedule is its own period


def _last_trigger(tags: dict[str, str]) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = json.loads(tags[Tags.RETRAIN_LAST_TRIGGER])
        datetime.fromisoformat(found["at"])
        return found
    except (KeyError, ValueError, TypeError):
        return None  # never triggered, or a tag written by hand that says nothing usable


def held_back(
    policy: RetrainParams, signal: Signal, last: dict[str, Any] | None, now: datetime
) -> dict[str, Any] | None:
    """The verdict holding `signal` back, or None when the policy lets it start training: a pure
    function of the policy, the last trigger ({"signal", "at"}) and the time, which the backtest
    runs in simulated time."""
    if signal not in policy.triggers:
        return {"retrain": False, "signal": signal, "reason": f"retrain.triggers leaves out {signal}"}
    if signal not in COOLED or last is None:
        return None
    cooldown = timedelta(hours=policy.cooldown_hours)
    if now - datetime.fromisoformat(last["at"]) >= cooldown:
        return None
    until = datetime.fromisoformat(last["at"]) + cooldown
    return {
        "retrain": False,
        "signal": signal,
        "reason": (
            f"cooling down: {last['signal']} started training at {last['at']}; the next triggered run "
            f"may start at {until.isoformat()} (retrain.cooldown_hours={policy.cooldown_hours:g})"
        ),
    }


def gate(
    params: Params,
    settings: PipelineSettings,
    signal: Signal,
    now: datetime | None = None,
    prediction_log: str | None = None,
) -> dict[str, Any]:
    """Whether `signal` may start training now, and why; an allowed drift or quality signal is
    claimed in the prediction log (`prediction_log`, default the setting), atomically, and recorded as the
    last trigger on the registered model."""
    from core.predictions.backends import open_store

    now = now or datetime.now(UTC)
    policy = params.retrain
    if signal not in policy.triggers or signal not in COOLED:
        return held_back(policy, signal, None, now) or {
            "retrain": True,
            "signal": signal,
            "reason": f"{signal} is a trigger",
        }
    client = connect(settings)
    name = params.model.name
    if alias_version(client, name, CHAMPION) is None:
        return {"retrain": False, "signal": signal, "reason": f"{name} has no @champion yet"}
    last = _last_trigger(dict(client.get_registered_model(name).tags))
    if (verdict := held_back(policy, signal, last, now)) is not None:
        return verdict
    cooldown = timedelta(hours=policy.cooldown_hours)
    store = open_store(prediction_log or settings.prediction_log_url)
    try:
        holder = store.claim_retrain(name, signal, now.timestamp(), cooldown.total_seconds())
    finally:
        store.close()
    if holder is not None:  # another monitor claimed it between our read and now
        claimed_at = datetime.fromtimestamp(holder[1], UTC)
        return {
            "retrain": False,
            "signal": signal,
            "reason": (
                f"cooling down: {holder[0]} claimed training at {claimed_at.isoformat()} "
                f"(retrain.cooldown_hours={policy.cooldown_hours:g})"
            ),
        }
    client.set_registered_model_tag(
        name, Tags.RETRAIN_LAST_TRIGGER, json.dumps({"signal": signal, "at": now.isoformat()})
    )
    log.info("retraining triggered", extra={"signal": signal, "model": name})
    return {"retrain": True, "signal": signal, "reason": f"{signal} starts training"}
