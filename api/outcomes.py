"""True outcomes of earlier predictions (`POST /feedback`), stored next to them in the prediction log.

An outcome addresses its prediction by the request id the server answered with (and the row, for
a batch) or by the entity id the client sent with it (the newest answered prediction carrying
it). It is stored once per prediction: the same outcome again is a duplicate, another one a
conflict that leaves the first in place. The outcome belongs to the request's row, so a shadow
prediction of the same row (`BITLOOP_API_SHADOW`) shares it. A prediction is known once the log
has written it, within `BITLOOP_API_PREDICTION_LOG_FLUSH_MS` of its answer while the log is
healthy; until then its outcome is reported unknown and may be sent again.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from api import metrics
from core.errors import ServiceUnavailable
from core.predictions.backends import open_store
from core.predictions.rows import scrubbed
from core.predictions.store import PredictionStore

STATUSES = ("recorded", "duplicate", "conflict", "unknown")


class OutcomesUnavailable(ServiceUnavailable, RuntimeError):
    """The prediction log cannot be read or written; the message names no password."""


@dataclass(frozen=True)
class Outcome:
    request_id: str | None
    row: int
    entity_id: str | None
    value: Any


def canonical(value: Any, task: str, classes: list[Any]) -> Any:
    """The outcome as the model states it (one of its classes, or a finite number for regression);
    ValueError with the reason otherwise."""
    if task == "regression":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError("the outcome of a regression is a finite number")
        return float(value)
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        for known in classes:
            if str(known) == str(value) or (
                isinstance(value, float) and isinstance(known, int) and value == known
            ):
                return known
    if isinstance(value, bool):
        for known in classes:
            if known is value or str(known).lower() == str(value).lower():
                return known
    shown = ", ".join(repr(c) for c in classes[:20])
    raise ValueError(f"the outcome is not one of the model's classes: {shown}")


class OutcomeStore:
    """This worker's connection for outcomes: opened on first use, one request at a time, opened
    again after a failure."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._store: PredictionStore | None = None
        self._lock = threading.Lock()

    def record(self, model_name: str, outcomes: list[Outcome]) -> list[str]:
        """Each outcome's status (STATUSES) for predictions of `model_name`, all stored in one
        transaction."""
        with self._lock:
            try:
                if self._store is None:
                    self._store = open_store(self.url)
                store, now = self._store, time.time()
                statuses = []
                for outcome in outcomes:
                    found = store.resolve(model_name, outcome.request_id, outcome.row, outcome.entity_id)
                    statuses.append(
                        "unknown" if found is None else store.add_outcome(*found, outcome.value, now)
                    )
                store.commit()
            except Exception as err:
                self._discard()
                raise OutcomesUnavailable(
                    scrubbed(
                        f"the prediction log cannot store outcomes now ({type(err).__name__}: {err})",
                        self.url,
                    )
                ) from None
        for status in statuses:
            metrics.FEEDBACK.labels(model_name, status).inc()
        return statuses

    def close(self) -> None:
        with self._lock:
            self._discard()

    def _discard(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            with contextlib.suppress(Exception):  # a broken connection is dropped either way
                store.rollback()
                store.close()
