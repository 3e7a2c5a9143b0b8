"""Everything the routes share, built in the lifespan; routes receive it through `StateDep`."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader

from api import metrics
from api.batching import MicroBatcher
from api.drift import DriftWatcher
from api.manager import ModelManager
from api.model import ERROR_WINDOW_MIN_OUTCOMES, ERROR_WINDOW_SECONDS, ServedModel
from api.predlog import PredictionLog, Row
from api.settings import ApiSettings


@dataclass
class ServerState:
    settings: ApiSettings
    manager: ModelManager
    batcher: MicroBatcher
    log: PredictionLog
    drift: DriftWatcher
    background: set[asyncio.Task[None]] = field(default_factory=set)

    def require_model(self) -> tuple[ServedModel, str]:
        """The model answering this request (A/B aware); 503 while no champion is loaded, or while the
        prediction log fails and the server is set to refuse rather than answer unlogged."""
        champion = self.require_champion()
        if self.settings.log_failure == "refuse" and self.log.status().error is not None:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                "the prediction log cannot be written and this server refuses to answer unlogged "
                "(BITLOOP_API_LOG_FAILURE=refuse); try again later",
            )
        model, variant = self.manager.pick()
        return model or champion, variant

    def require_champion(self) -> ServedModel:
        champion = self.manager.champion
        if champion is None:
            detail = "; ".join(
                [
                    f"no model has been promoted to {self.manager.name}@champion yet: run the training "
                    "pipeline (make up or make repro)",
                    *self.manager.problems(),
                ]
            )
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail)
        return champion

    def readiness(self) -> tuple[bool, list[str]]:
        """Whether this server should get traffic, and what is wrong, in words fit for open endpoints."""
        problems = self.manager.problems()
        champion = self.manager.champion
        ready = champion is not None
        if champion is None:
            problems.insert(0, "no champion loaded yet")
        else:
            share, records = champion.faults.ratio()
            if records >= ERROR_WINDOW_MIN_OUTCOMES and share > self.settings.max_error_ratio:
                ready = False
                problems.insert(
                    0,
                    f"version {champion.version} failed {share:.0%} of the {records} records it scored in "
                    f"the last {ERROR_WINDOW_SECONDS:g} s (the limit is {self.settings.max_error_ratio:.0%})",
                )
        log = self.log.status()
        if log.error is not None:
            problems.append(
                f"the prediction log is degraded: writes fail, {log.pending_rows} rows wait in memory, "
                f"{log.dropped_rows} dropped"
            )
            ready = ready and self.settings.log_failure == "degrade"
        elif log.dropped_rows:
            problems.append(f"the prediction log dropped {log.dropped_rows} rows since start-up")
        return ready, problems

    def record(
        self,
        model: ServedModel,
        variant: str,
        request_id: str,
        records: list[dict[str, Any]],
        labels: list[Any],
        probabilities: list[dict[str, float]] | None,
    ) -> None:
        """Count the predictions and queue them for the prediction log."""
        now = time.time()
        self.log.append(
            [
                Row(
                    now,
                    request_id,
                    model.name,
                    model.version,
                    variant,
                    record,
                    label,
                    None if probabilities is None else probabilities[i],
                )
                for i, (record, label) in enumerate(zip(records, labels, strict=True))
            ]
        )
        if model.schema.task == "regression":
            span = (model.profile or {}).get("target")
            if span:  # a model trained before profiles held the target's range has no histogram
                low, width = span["min"], (span["max"] - span["min"]) or 1.0
                metrics.TARGET_RANGE.labels(model.name, variant, "min").set(span["min"])
                metrics.TARGET_RANGE.labels(model.name, variant, "max").set(span["max"])
                histogram = metrics.PREDICTED_POSITION.labels(model.name, variant)
                for value in labels:
                    histogram.observe((value - low) / width)
            metrics.PREDICTIONS.labels(model.name, model.version, variant, "value").inc(len(labels))
        else:
            for label in set(labels):
                metrics.PREDICTIONS.labels(model.name, model.version, variant, str(label)).inc(
                    labels.count(label)
                )


def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.bitloop
    return state


StateDep = Annotated[ServerState, Depends(get_state)]
_api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="Required when the server is started with BITLOOP_API_API_KEY",
)


def require_api_key(state: StateDep, key: Annotated[str | None, Depends(_api_key_header)]) -> None:
    expected = state.settings.api_key
    if expected is None:
        return
    if key is None or not secrets.compare_digest(key.encode(), expected.get_secret_value().encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong X-API-Key header",
            headers={"WWW-Authenticate": "APIKey"},
        )
