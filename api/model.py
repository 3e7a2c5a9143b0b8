"""A loaded model version with everything needed to validate, predict and describe it."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd
from pydantic import BaseModel

from core.calibration import Calibration
from core.compiled import ONNX_RUNTIME, SKLEARN_RUNTIME, CompiledModel
from core.errors import BitloopError
from core.profile import ReferenceProfile
from core.schema import DatasetSchema

log = logging.getLogger(__name__)


ERROR_WINDOW_SECONDS = 60.0
ERROR_WINDOW_MIN_OUTCOMES = 20
Scored = tuple[Any, dict[str, float] | None]
"""What scoring one record gives: its label, and its class probabilities (None for regression)."""


class ModelLoadError(BitloopError, RuntimeError):
    """A registry version could not be turned into a servable model.

    `public` says why in words fit for an unauthenticated answer; the message has the details.
    """

    def __init__(self, message: str, public: str = "it cannot be loaded (the server log says why)") -> None:
        super().__init__(message)
        self.public = public


class UnscorableRecord(BitloopError, ValueError):
    """A record the schema accepts but the model cannot score: the input's fault, answered with a 422."""

    def __init__(self, field: str | None, cause: Exception) -> None:
        where = f"the value of {field!r}" if field else "this record"
        super().__init__(f"the model cannot score {where} ({type(cause).__name__}); send a typical value")
        self.field, self.cause = field, cause


class FaultWindow:
    """Outcomes of recent model calls: the share of records the model failed on, over a time window.

    Appends come from the inference threads; deque appends are atomic, and a reader copies first.
    """

    def __init__(self) -> None:
        self._events: deque[tuple[float, int, int, int]] = deque(maxlen=4096)

    def add(self, scored: int, faults: int, refused: int = 0) -> None:
        self._events.append((time.monotonic(), scored, faults, refused))

    def ratio(self) -> tuple[float, int]:
        """(fault share, records) over the last ERROR_WINDOW_SECONDS."""
        share, _, total = self.ratios()
        return share, total

    def ratios(self) -> tuple[float, float, int]:
        """(fault share, refused share, records) over the last ERROR_WINDOW_SECONDS: faults are the
        model's own, refusals records the schema accepted and the model could not score (422s)."""
        since = time.monotonic() - ERROR_WINDOW_SECONDS
        recent = [(n, f, r) for at, n, f, r in list(self._events) if at >= since]
        total = sum(n for n, _, _ in recent)
        if not total:
            return 0.0, 0.0, 0
        return sum(f for _, f, _ in recent) / total, sum(r for _, _, r in recent) / total, total


POISON_MEMORY_SECONDS = 60.0
POISON_MEMORY_RECORDS = 10_000
DIAGNOSES_PER_SECOND = 5
"""Refused records whose field is looked for, per second and version; beyond, a refusal names the
record, not the field: naming it costs a model call per feature, and a client sending a new
unscorable value each time would otherwise spend the inference threads on its own 422s."""


class PoisonMemory:
    """Records a version refused, by a hash of their values, for POISON_MEMORY_SECONDS (at most
    POISON_MEMORY_RECORDS of them, the oldest forgotten first).

    A refused record costs its micro-batch a bisection and itself a diagnosis, a dozen model calls;
    one sent again and again (a client retrying, a broken integration) would cost that every time
    and halve everyone else's throughput. Remembered, it is answered its 422 without a model call.
    A version answers a record the same way every time, so the memory is per version."""

    def __init__(self) -> None:
        self._known: OrderedDict[bytes, tuple[float, UnscorableRecord]] = OrderedDict()
        self._lock = threading.Lock()  # the inference threads share it

    @staticmethod
    def key(record: dict[str, Any]) -> bytes:
        return hashlib.blake2b(orjson.dumps(record, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()

    def __len__(self) -> int:
        return len(self._known)

    def get(self, key: bytes) -> UnscorableRecord | None:
        with self._lock:
            found = self._known.get(key)
            if found is None:
                return None
            if time.monotonic() - found[0] > POISON_MEMORY_SECONDS:
                del self._known[key]
                return None
        return UnscorableRecord(found[1].field, found[1].cause)  # one exception per answer

    def put(self, key: bytes, refusal: UnscorableRecord) -> None:
        with self._lock:
            self._known[key] = (time.monotonic(), refusal)
            self._known.move_to_end(key)
            while len(self._known) > POISON_MEMORY_RECORDS:
                self._known.popitem(last=False)


class DiagnosisBudget:
    """At most `per_second` diagnoses in any second, across the inference threads."""

    def __init__(self, per_second: int) -> None:
        self._per_second = per_second
        self._recent: deque[float] = deque()
        self._lock = threading.Lock()

    def take(self, now: float) -> bool:
        with self._lock:
            while self._recent and now - self._recent[0] > 1.0:
                self._recent.popleft()
            if len(self._recent) >= self._per_second:
                return False
            self._recent.append(now)
            return True


@dataclass
class ServedModel:
    name: str
    version: str
    run_id: str | None
    estimator: Any
    schema: DatasetSchema
    metrics: dict[str, float]
    data_version: str | None
    record_model: type[BaseModel]
    batch_model: type[BaseModel]
    profile: ReferenceProfile | None = None
    """The training data's reference profile, which drift detection compares live inputs with."""
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    faults: FaultWindow = field(default_factory=FaultWindow)
    poisons: PoisonMemory = field(default_factory=PoisonMemory)
    _diagnoses: DiagnosisBudget = field(
        default_factory=lambda: DiagnosisBudget(DIAGNOSES_PER_SECOND), repr=False
    )
    _typical_checked_until: float = field(default=0.0, repr=False)
    compiled: CompiledModel | None = None
    """The ONNX graph that answers instead of `estimator`, when the version passed its parity checks."""
    runtime_detail: str = "scikit-learn"
    calibration: Calibration | None = None
    """A classifier's calibration map from its holdout, which corrects the probabilities the quality
    estimate reads (None: a regressor, or a version logged before calibration maps)."""
    traffic_check: str | None = None
    """How it scored the records the version it replaced answered, before it served (None: nothing
    to check against)."""

    @property
    def runtime(self) -> str:
        return SKLEARN_RUNTIME if self.compiled is None else ONNX_RUNTIME

    def familiar(self, record: dict[str, Any]) -> bool:
        """Whether every category value of `record` was seen in training (its reference profile). An
        open category's new value is what an encoder refuses: such records are scored apart from the
        others (`MicroBatcher`), so that one that fails costs its own call, not a bisection of theirs."""
        if self.profile is None:
            return True
        for spec in self.schema.features:
            value = record.get(spec.name)
            if spec.kind != "categorical" or value is None:
                continue
            entry = self.profile.features.get(spec.name)
            if entry is not None and entry.frequencies and str(value) not in entry.frequencies:
                return False
        return True

    def typical(self, feature: str) -> float | str | None:
        """The feature's training median or most frequent category, from the reference profile."""
        return None if self.profile is None else self.profile.typical(feature)

    @property
    def classes(self) -> list[Any]:
        return [c.item() if isinstance(c, np.generic) else c for c in getattr(self.estimator, "classes_", [])]

    def predict(self, records: list[dict[str, Any]]) -> tuple[list[Any], list[dict[str, float]] | None]:
        """Predictions (and class probabilities for classification) for validated records.

        Raises when the model fails or answers something that is not a number for every record.
        """
        if self.schema.task == "regression":
            values = self._values(records)
            if values.shape != (len(records),) or not np.isfinite(values).all():
                raise ValueError(f"the model answered {values.shape} values, not {len(records)} finite ones")
            return values.tolist(), None
        proba = self._values(records)
        if proba.shape != (len(records), len(self.classes)) or not np.isfinite(proba).all():
            raise ValueError(
                f"the model answered probabilities of shape {proba.shape}, not {len(records)} finite rows "
                f"over {len(self.classes)} classes"
            )
        classes = self.classes
        labels = [classes[i] for i in np.argmax(proba, axis=1).tolist()]
        names = [str(c) for c in classes]
        return labels, [dict(zip(names, row, strict=True)) for row in proba.tolist()]

    def _values(self, records: list[dict[str, Any]]) -> np.ndarray:
        """Probabilities (classification) or values (regression) from the runtime serving this version."""
        if self.compiled is not None:
            return self.compiled.run_records(records)
        x = self.schema.frame(records)
        if self.schema.task == "regression":
            return np.asarray(self.estimator.predict(x), dtype=float)
        return np.asarray(self.estimator.predict_proba(x), dtype=float)

    def score(self, records: list[dict[str, Any]]) -> list[Scored | Exception]:
        """Each record's outcome: one model call when all succeed; otherwise the failing records are
        found by bisection, so a record the model cannot score never fails the others beside it."""
        # Records are hashed only while the memory holds something: a version that refused nothing
        # costs its batches no hashing.
        known: dict[int, Scored | Exception] = {}
        if self.poisons:
            for i, record in enumerate(records):
                if (refusal := self.poisons.get(PoisonMemory.key(record))) is not None:
                    known[i] = refusal
        rest = [i for i in range(len(records)) if i not in known]
        scored = self._score_isolating([records[i] for i in rest]) if rest else []
        found = dict(known)
        for i, outcome in zip(rest, scored, strict=True):
            found[i] = outcome
            if isinstance(outcome, UnscorableRecord):
                self.poisons.put(PoisonMemory.key(records[i]), outcome)
        outcomes = [found[i] for i in range(len(records))]
        refused = sum(isinstance(o, UnscorableRecord) for o in outcomes)
        faults = sum(isinstance(o, Exception) for o in outcomes) - refused
        self.faults.add(len(records), faults, refused)
        return outcomes

    def _score_isolating(self, records: list[dict[str, Any]]) -> list[Scored | Exception]:
        try:
            labels, probabilities = self.predict(records)
        except Exception as err:
            if len(records) == 1:
                return [self._diagnose(records[0], err)]
            middle = len(records) // 2
            return self._score_isolating(records[:middle]) + self._score_isolating(records[middle:])
        if probabilities is None:
            return [(label, None) for label in labels]
        return list(zip(labels, probabilities, strict=True))

    def _diagnose(self, record: dict[str, Any], err: Exception) -> Exception:
        """UnscorableRecord naming the field when the record is at fault; `err` itself when the model
        cannot score even its own typical record (a server fault). At most DIAGNOSES_PER_SECOND look
        for the field; beyond, the record is named without it."""
        now = time.monotonic()
        typical = self.typical_record()
        if now >= self._typical_checked_until:
            try:
                self.predict([typical])
            except Exception:
                log.exception("the served model fails on its typical record", extra={"version": self.version})
                return err
            self._typical_checked_until = now + 1.0  # a model that scored it a moment ago still does
        if not self._diagnoses.take(now):
            return UnscorableRecord(None, err)
        for spec in self.schema.features:
            if record[spec.name] == typical[spec.name]:
                continue
            try:
                self.predict([{**record, spec.name: typical[spec.name]}])
            except Exception:  # noqa: S112 - this field is not the culprit; try the next one
                continue
            return UnscorableRecord(spec.name, err)
        return UnscorableRecord(None, err)

    def typical_record(self) -> dict[str, Any]:
        """A record of typical training values (0 or the first category where none was profiled)."""
        record: dict[str, Any] = {}
        for spec in self.schema.features:
            value = self.typical(spec.name)
            if value is None and spec.kind == "numeric":
                value = 0.0
            elif value is None:
                value = spec.categories[0] if spec.categories else (None if spec.nullable else "unknown")
            record[spec.name] = value
        return record

    def sample_records(self, example: pd.DataFrame | None, rows: int = 20) -> list[dict[str, Any]]:
        """What a version must score before it serves: its input example, typical values, values drawn
        from its reference profile, and (where the schema allows) a record of missing values."""
        records = [self.typical_record()]
        if example is not None and set(self.schema.feature_names) <= set(example.columns):
            frame = example[self.schema.feature_names].astype(object)
            records += [
                {str(k): v for k, v in row.items()}
                for row in frame.where(frame.notna(), None).to_dict(orient="records")
            ]
        features = {} if self.profile is None else self.profile.features
        for i in range(rows):
            record = dict(records[0])
            for spec in self.schema.features:
                entry = features.get(spec.name)
                if entry is not None and entry.sample:
                    record[spec.name] = float(entry.sample[(i * 7919) % len(entry.sample)])
                elif entry is not None and entry.frequencies:
                    categories = sorted(entry.frequencies)
                    record[spec.name] = categories[i % len(categories)]
            records.append(record)
        if all(spec.nullable for spec in self.schema.features):
            records.append(dict.fromkeys(self.schema.feature_names))
        return records

    def check(self, example: pd.DataFrame | None) -> None:
        """Score the stored sample; ModelLoadError unless every record gets a well-formed answer."""
        records = self.sample_records(example)
        try:
            self.predict(records)
        except Exception as err:
            raise ModelLoadError(
                f"version {self.version} cannot predict its own sample of {len(records)} records: "
                f"{type(err).__name__}: {str(err)[:300]}",
                public="it cannot predict its own input example and reference sample",
            ) from err
        known = {str(c) for c in self.schema.classes}
        if self.schema.task == "classification" and known and not {str(c) for c in self.classes} <= known:
            raise ModelLoadError(
                f"version {self.version} predicts classes {self.classes}, not the schema's {sorted(known)}",
                public="it predicts classes its feature schema does not have",
            )


MAX_REFUSED_SHARE = 0.01
"""A version that refuses more than this share of the records its predecessor answered never serves."""
TRAFFIC_CHECK_RECORDS = 500
"""The newest records the serving version answered that a version must score before it replaces it."""


def check_traffic(model: ServedModel, answered: list[dict[str, Any]], predecessor: str) -> str:
    """Score the records `predecessor` answered: ModelLoadError when `model` refuses more than
    MAX_REFUSED_SHARE of them (its own sample passed, but the traffic it is about to get does not);
    otherwise the figures in words. Records the schema no longer accepts are left out."""
    records = []
    for raw in answered:
        try:
            records.append(model.record_model.model_validate(raw).model_dump(by_alias=True))
        except Exception:  # noqa: S112 - not this schema's record: the schema check judges that
            continue
    if not records:
        return f"no logged records of version {predecessor} to check against"
    outcomes = model._score_isolating(records)
    refused = sum(isinstance(o, Exception) for o in outcomes)
    figures = (
        f"refuses {refused} of the {len(records)} records version {predecessor} answered most recently "
        f"({refused / len(records):.1%}; at most {MAX_REFUSED_SHARE:.0%})"
    )
    if refused > MAX_REFUSED_SHARE * len(records):
        example = next(o for o in outcomes if isinstance(o, Exception))
        raise ModelLoadError(f"version {model.version} {figures}: {example}", public=f"it {figures}")
    return figures


def split_scored(scored: list[Scored], task: str) -> tuple[list[Any], list[dict[str, float]] | None]:
    """Scored records as the labels and (classification only) the class probabilities."""
    labels = [label for label, _ in scored]
    return labels, None if task == "regression" else [p or {} for _, p in scored]
