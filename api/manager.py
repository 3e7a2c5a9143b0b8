"""Which model versions are served, and the watcher that swaps them when registry aliases move.

A swap is one reference assignment: requests already holding the old model finish on it, new
requests get the new one. A version that cannot load, cannot score its own stored sample, or whose
features differ from the one being served, is refused and counted; the old one keeps serving. A
refused version is tried again after REFUSAL_RETRY_SECONDS or on POST /admin/reload. An
unreachable registry changes nothing. What went wrong is kept in two forms: words fit for open
endpoints (`problems()`), and the details, which only the log gets.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from api import metrics
from api.loading import load_version
from api.model import TRAFFIC_CHECK_RECORDS, ModelLoadError, ServedModel, check_traffic
from api.periodic import Periodic
from api.settings import ApiSettings
from core.predictions.access import answered_records
from core.predictions.rows import scrubbed
from core.registry import CANARY, CHALLENGER, CHAMPION, SERVED_ALIASES, alias_version, fail_fast_client
from core.rollout import Rollout, in_canary, last_outcome, read_rollout

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)
REFUSAL_RETRY_SECONDS = 300.0


@dataclass(frozen=True)
class Refusal:
    version: str
    reason: str
    """Public words: no URLs, paths or exception text."""
    at: float


@dataclass(frozen=True)
class RefreshResult:
    changed: bool
    detail: str


class ModelManager:
    def __init__(self, settings: ApiSettings, model_name: str) -> None:
        self.settings = settings
        self.name = model_name
        self.champion: ServedModel | None = None
        self.canary: ServedModel | None = None
        self.rollout: Rollout | None = None
        """The terms of the rollout the canary serves under (its share), as the registry records them."""
        self.last_rollout: dict[str, Any] | None = None
        """The last rollout's outcome, from the registered model."""
        self.challenger: ServedModel | None = None
        self.registry_down_since: float | None = None
        self.refusals: dict[str, Refusal] = {}
        """The version each variant's alias points at that was refused, while it still points there."""
        self.clock = time.monotonic
        """When refusals happened and when they are retried (a test moves it on)."""
        self._lock = asyncio.Lock()
        self._watcher = Periodic("registry check", settings.reload_interval_seconds, self.refresh)
        self.on_swap: list[Any] = []
        self.resident = True
        """Whether this model's versions are kept in memory (api.residency unloads the least recently
        used models past BITLOOP_API_MAX_LOADED_MODELS; the registry check leaves an unloaded one be)."""
        self.last_used = self.clock()

    def pick(self, entity_id: str | None = None) -> tuple[ServedModel | None, str]:
        """The model that answers this request: @canary for the rollout's share (the same side for an
        entity id all rollout long), @challenger for the A/B share, else @champion."""
        canary, rollout = self.canary, self.rollout
        if canary is not None and rollout is not None and rollout.version == canary.version:
            if entity_id is not None:
                chosen = in_canary(entity_id, canary.version, rollout.share)
            else:
                chosen = random.random() < rollout.share  # noqa: S311
            if chosen:
                return canary, "canary"
        challenger = self.challenger
        if challenger is not None and random.random() < self.settings.challenger_share:  # noqa: S311
            return challenger, "challenger"
        return self.champion, "champion"

    async def refresh(self, retry_refused: bool = False) -> RefreshResult:
        async with self._lock:
            if retry_refused:
                self.refusals.clear()
            if not self.resident:
                return RefreshResult(False, "unloaded: loaded again when it is next asked for")
            return await asyncio.to_thread(self._refresh)

    def touch(self) -> None:
        """A request asked for this model: it is the most recently used."""
        self.last_used = self.clock()

    async def load(self) -> RefreshResult:
        """Make an unloaded model resident again and load the versions its aliases name."""
        self.resident = True
        return await self.refresh()

    async def unload(self) -> None:
        """Drop this model's versions from memory until it is loaded again; requests holding one
        finish on it."""
        async with self._lock:
            self.resident = False
            for variant in SERVED_ALIASES:
                if getattr(self, variant) is not None:
                    self._install(variant, None)

    def problems(self) -> list[str]:
        """What is wrong with the registry or the aliased versions, in words fit for open endpoints."""
        notes = []
        if self.registry_down_since is not None:
            since = time.strftime("%H:%M:%S UTC", time.gmtime(self.registry_down_since))
            serving = "serving the loaded versions" if self.champion is not None else "nothing is loaded yet"
            notes.append(f"the registry has been unreachable since {since}; {serving}")
        for variant, refusal in self.refusals.items():
            notes.append(f"@{variant} version {refusal.version} was refused: {refusal.reason}")
        return notes

    def start(self) -> None:
        self._watcher.start()

    async def stop(self) -> None:
        await self._watcher.stop()

    def _refresh(self) -> RefreshResult:
        try:
            # Fail fast and retry on the next tick rather than block on MLflow's long backoff.
            client = fail_fast_client(
                self.settings.mlflow_tracking_uri, self.settings.registry_timeout_seconds
            )
            wanted = {variant: alias_version(client, self.name, variant) for variant in SERVED_ALIASES}
            tags = dict(client.get_registered_model(self.name).tags) if wanted[CHAMPION] else {}
        except Exception as err:  # registry down: keep serving what is loaded
            if self.registry_down_since is None:
                self.registry_down_since = time.time()
            metrics.REGISTRY_REACHABLE.labels(self.name).set(0)
            log.warning("registry unreachable; serving the loaded model", extra={"error": str(err)[:300]})
            serving = "serving the loaded versions" if self.champion is not None else "nothing is loaded yet"
            return RefreshResult(False, f"registry unreachable; {serving}")
        if self.registry_down_since is not None:
            log.info("registry reachable again")
        self.registry_down_since = None
        metrics.REGISTRY_REACHABLE.labels(self.name).set(1)
        last = last_outcome(tags)
        if last is not None and last != self.last_rollout:
            self.last_rollout = last
            at = datetime.fromisoformat(last["at"]).timestamp()
            metrics.ROLLOUT_LAST.labels(self.name, str(last["version"]), str(last["outcome"])).set(at)
        rollout = read_rollout(wanted[CANARY])
        changed, notes = False, []
        for variant in SERVED_ALIASES:
            version = wanted[variant]
            swapped, note = self._refresh_variant(
                client, variant, None if version is None else str(version.version), rollout
            )
            changed |= swapped
            notes += [note] if note else []
        return RefreshResult(changed, "; ".join(notes) or "already serving the registry's versions")

    def _refresh_variant(
        self, client: MlflowClient, variant: str, wanted_version: str | None, rollout: Rollout | None
    ) -> tuple[bool, str | None]:
        """Bring one variant to the version its alias names: whether it changed, and what to say."""
        current: ServedModel | None = getattr(self, variant)
        refusal = self.refusals.get(variant)
        if refusal is not None and refusal.version != wanted_version:
            del self.refusals[variant]  # the alias moved on
        if wanted_version is None:
            if variant in (CANARY, CHALLENGER) and current is not None:
                self._install(variant, None)
                return True, None
            return False, None
        if variant == CANARY:
            if rollout is None:  # an alias set by hand: no share to serve it at
                reason = "it carries no rollout terms (share, stable version, start): promote starts canaries"
                self.refusals[CANARY] = Refusal(wanted_version, reason, self.clock())
                if current is not None:
                    self._install(variant, None)
                return current is not None, f"canary version {wanted_version} refused: {reason}"
            self.rollout = rollout  # its share may change while the version stays
        if current is not None and current.version == wanted_version:
            return False, None
        refusal = self.refusals.get(variant)
        if refusal is not None and self.clock() - refusal.at < REFUSAL_RETRY_SECONDS:
            return False, f"version {wanted_version} stays refused: {refusal.reason}"
        try:
            model = self._load_checked(client, variant, wanted_version, current)
        except ModelLoadError as err:
            metrics.RELOADS.labels(self.name, variant, "failure").inc()
            self.refusals[variant] = Refusal(wanted_version, err.public, self.clock())
            log.error(
                "model swap refused; still serving the loaded version",
                extra={"variant": variant, "version": wanted_version, "error": str(err)[:500]},
            )
            return False, f"version {wanted_version} refused: {err.public}"
        self.refusals.pop(variant, None)
        self._install(variant, model)
        metrics.RELOADS.labels(self.name, variant, "success").inc()
        log.info(
            "model swapped in",
            extra={
                "variant": variant,
                "model": self.name,
                "version": model.version,
                "runtime": model.runtime,
            },
        )
        return True, f"{variant} is now version {model.version}"

    def _load_checked(
        self, client: MlflowClient, variant: str, version: str, current: ServedModel | None
    ) -> ServedModel:
        """Load a version, and refuse (ModelLoadError) one that could not take its variant's place."""
        model = load_version(
            client,
            self.name,
            version,
            closed_categories=self.settings.closed_categories,
            max_rows=self.settings.max_batch_rows,
            runtime=self.settings.runtime,
        )
        reference = self.champion if variant in (CANARY, CHALLENGER) else current
        if reference is not None and model.schema.fingerprint() != reference.schema.fingerprint():
            difference = (
                f"version {model.version} has a different task or feature set than "
                f"version {reference.version}; not swapped in"
            )
            raise ModelLoadError(difference, public=difference)
        # A new champion takes all the traffic at once: it must answer what the old one did. A canary
        # is judged on the traffic itself by its rollout, its failures answered by the stable version
        # (rollout.slo.max_error_ratio_increase).
        if variant == CHAMPION and current is not None:
            model.traffic_check = self._check_traffic(model, current)
        return model

    def _check_traffic(self, model: ServedModel, reference: ServedModel) -> str:
        """Before it serves, a new champion scores what the one it replaces answered lately (the
        prediction log's newest records of that version): its own sample holds only values seen in
        training, the traffic may not."""
        try:
            answered = answered_records(
                self.settings.prediction_log_url, self.name, reference.version, TRAFFIC_CHECK_RECORDS
            )
        except Exception as err:  # the log unreadable: the swap is not held up by it
            error = scrubbed(str(err), self.settings.prediction_log_url)[:300]
            log.warning("cannot read the prediction log to check a version", extra={"error": error})
            return "not checked: the prediction log could not be read"
        return check_traffic(model, answered, reference.version)

    def _install(self, variant: str, model: ServedModel | None) -> None:
        old: ServedModel | None = getattr(self, variant)
        setattr(self, variant, model)  # the atomic swap
        if old is not None:
            metrics.MODEL_INFO.labels(self.name, old.version, variant, old.runtime).set(0)
        if model is not None:
            metrics.MODEL_INFO.labels(self.name, model.version, variant, model.runtime).set(1)
            metrics.MODEL_VERSION.labels(self.name, variant).set(float(model.version))
        else:
            metrics.MODEL_VERSION.labels(self.name, variant).set(0)
        metrics.MODEL_LOADED.labels(self.name).set(1 if self.champion is not None or not self.resident else 0)
        if variant == CANARY:
            metrics.ROLLOUT_SHARE.labels(self.name).set(
                0.0 if model is None or self.rollout is None else self.rollout.share
            )
            if model is not None:
                self._zero_canary_series(model)
        for callback in self.on_swap:
            callback()

    def _zero_canary_series(self, model: ServedModel) -> None:
        """Export the canary's counters at 0 before its first answer, so that Prometheus' increase()
        over the rollout counts its first records and failures too (a series' first sample is its
        baseline)."""
        for label in [str(c) for c in model.classes] or ["value"]:
            metrics.PREDICTIONS.labels(self.name, model.version, CANARY, label)
        for cause in ("input", "model"):
            metrics.PREDICTION_FAILURES.labels(self.name, model.version, CANARY, cause)
        metrics.INFERENCE.labels(self.name, model.version, CANARY)
        metrics.CANARY_FALLBACKS.labels(self.name, model.version)
