"""Which model versions are served, and the watcher that swaps them when registry aliases move.

A swap is one reference assignment: requests already holding the old model finish on it, new
requests get the new one. A version that cannot load, or whose features differ from the one
being served, is refused and counted; the old one keeps serving. An unreachable registry
changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from dataclasses import dataclass
from typing import Any

from api import metrics
from api.model import ModelLoadError, ServedModel, load_version
from api.periodic import Periodic
from api.settings import ApiSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefreshResult:
    changed: bool
    detail: str


class ModelManager:
    def __init__(self, settings: ApiSettings, model_name: str) -> None:
        self.settings = settings
        self.name = model_name
        self.champion: ServedModel | None = None
        self.challenger: ServedModel | None = None
        self.last_error: str | None = None
        self._lock = asyncio.Lock()
        self._watcher = Periodic("registry check", settings.reload_interval_seconds, self.refresh)
        self.on_swap: list[Any] = []

    def pick(self) -> tuple[ServedModel | None, str]:
        """The model that answers this request: @challenger for the A/B share, else @champion."""
        challenger = self.challenger
        if challenger is not None and random.random() < self.settings.challenger_share:  # noqa: S311
            return challenger, "challenger"
        return self.champion, "champion"

    async def refresh(self) -> RefreshResult:
        async with self._lock:
            return await asyncio.to_thread(self._refresh)

    def start(self) -> None:
        self._watcher.start()

    async def stop(self) -> None:
        await self._watcher.stop()

    def _client(self) -> Any:
        from mlflow import MlflowClient

        # Fail fast and retry on the next tick rather than block on MLflow's long backoff.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(self.settings.registry_timeout_seconds)))
        return MlflowClient(self.settings.mlflow_tracking_uri)

    def _alias(self, client: Any, alias: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return client.get_model_version_by_alias(self.name, alias)
        except MlflowException as err:
            if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            raise

    def _refresh(self) -> RefreshResult:
        try:
            client = self._client()
            wanted = {
                "champion": self._alias(client, "champion"),
                "challenger": self._alias(client, "challenger"),
            }
        except Exception as err:  # registry down: keep serving what is loaded
            self.last_error = f"registry unreachable: {type(err).__name__}: {err}"
            log.warning("registry unreachable; serving the loaded model", extra={"error": str(err)[:300]})
            return RefreshResult(False, self.last_error)
        changed, notes = False, []
        for variant in ("champion", "challenger"):
            version = wanted[variant]
            current: ServedModel | None = getattr(self, variant)
            if version is None:
                if variant == "challenger" and current is not None:
                    self._install(variant, None)
                    changed = True
                continue
            if current is not None and current.version == str(version.version):
                continue
            try:
                model = load_version(
                    client,
                    self.name,
                    str(version.version),
                    closed_categories=self.settings.closed_categories,
                    max_rows=self.settings.max_batch_rows,
                )
                reference = self.champion if variant == "challenger" else current
                if reference is not None and model.schema.fingerprint() != reference.schema.fingerprint():
                    raise ModelLoadError(
                        f"version {model.version} has a different task or feature set than "
                        f"version {reference.version}; not swapped in"
                    )
            except ModelLoadError as err:
                metrics.RELOADS.labels(variant, "failure").inc()
                self.last_error = str(err)
                log.error(
                    "model swap refused; still serving the loaded version",
                    extra={"variant": variant, "error": str(err)[:500]},
                )
                notes.append(str(err))
                continue
            self._install(variant, model)
            metrics.RELOADS.labels(variant, "success").inc()
            changed = True
            notes.append(f"{variant} is now version {model.version}")
            log.info(
                "model swapped in", extra={"variant": variant, "model": self.name, "version": model.version}
            )
        if changed:
            self.last_error = None
        return RefreshResult(changed, "; ".join(notes) or "already serving the registry's versions")

    def _install(self, variant: str, model: ServedModel | None) -> None:
        old: ServedModel | None = getattr(self, variant)
        setattr(self, variant, model)  # the atomic swap
        if old is not None:
            metrics.MODEL_INFO.labels(self.name, old.version, variant).set(0)
        if model is not None:
            metrics.MODEL_INFO.labels(self.name, model.version, variant).set(1)
            metrics.MODEL_VERSION.labels(self.name, variant).set(float(model.version))
        else:
            metrics.MODEL_VERSION.labels(self.name, variant).set(0)
        metrics.MODEL_LOADED.set(1 if self.champion is not None else 0)
        for callback in self.on_swap:
            callback()
