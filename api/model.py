"""A loaded model version with everything needed to validate, predict and describe it."""

from __future__ import annotations

import logging
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel

from api.schemas import build_batch_model, build_record_model
from pipeline.calibration import Calibration
from pipeline.compiled import ONNX_RUNTIME, SKLEARN_RUNTIME, Compilation, CompiledModel
from pipeline.profile import ReferenceProfile
from pipeline.registry import (
    COMPILED_ARTIFACT,
    Tags,
    download_model,
    run_calibration,
    run_file,
    run_profile,
    run_schema,
)
from pipeline.schema import DatasetSchema
from pipeline.serialization import UntrustedModel, load_sklearn_model

log = logging.getLogger(__name__)


ERROR_WINDOW_SECONDS = 60.0
ERROR_WINDOW_MIN_OUTCOMES = 20
SERVER_PARITY_TOLERANCE = 1e-5
"""How far the compiled graph may stray from scikit-learn on a version's stored sample, in this server."""
Outcome = tuple[Any, dict[str, float] | None]
Runtime = Literal["auto", "compiled", "sklearn"]


class ModelLoadError(RuntimeError):
    """A registry version could not be turned into a servable model.

    `public` says why in words fit for an unauthenticated answer; the message has the details.
    """

    def __init__(self, message: str, public: str = "it cannot be loaded (the server log says why)") -> None:
        super().__init__(message)
        self.public = public


class UnscorableRecord(ValueError):
    """A record the schema accepts but the model cannot score: the input's fault, answered with a 422."""

    def __init__(self, field: str | None, cause: Exception) -> None:
        where = f"the value of {field!r}" if field else "this record"
        super().__init__(f"the model cannot score {where} ({type(cause).__name__}); send a typical value")
        self.field = field


class FaultWindow:
    """Outcomes of recent model calls: the share of records the model failed on, over a time window.

    Appends come from the inference threads; deque appends are atomic, and a reader copies first.
    """

    def __init__(self) -> None:
        self._events: deque[tuple[float, int, int]] = deque(maxlen=4096)

    def add(self, scored: int, faults: int) -> None:
        self._events.append((time.monotonic(), scored, faults))

    def ratio(self) -> tuple[float, int]:
        """(fault share, records) over the last ERROR_WINDOW_SECONDS."""
        since = time.monotonic() - ERROR_WINDOW_SECONDS
        recent = [(n, f) for at, n, f in list(self._events) if at >= since]
        total = sum(n for n, _ in recent)
        return (sum(f for _, f in recent) / total if total else 0.0), total


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
    compiled: CompiledModel | None = None
    """The ONNX graph that answers instead of `estimator`, when the version passed its parity checks."""
    runtime_detail: str = "scikit-learn"
    calibration: Calibration | None = None
    """A classifier's calibration map from its holdout, which corrects the probabilities the quality
    estimate reads (None: a regressor, or a version logged before calibration maps)."""

    @property
    def runtime(self) -> str:
        return SKLEARN_RUNTIME if self.compiled is None else ONNX_RUNTIME

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

    def score(self, records: list[dict[str, Any]]) -> list[Outcome | Exception]:
        """Each record's outcome: one model call when all succeed; otherwise the failing records are
        found by bisection, so a record the model cannot score never fails the others beside it."""
        outcomes = self._score_isolating(records)
        faults = sum(isinstance(o, Exception) and not isinstance(o, UnscorableRecord) for o in outcomes)
        self.faults.add(len(records), faults)
        return outcomes

    def _score_isolating(self, records: list[dict[str, Any]]) -> list[Outcome | Exception]:
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
        cannot score even its own typical record (a server fault)."""
        typical = self.typical_record()
        try:
            self.predict([typical])
        except Exception:
            log.exception("the served model fails on its typical record", extra={"version": self.version})
            return err
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


def split_outcomes(outcomes: list[Outcome], task: str) -> tuple[list[Any], list[dict[str, float]] | None]:
    """Scored outcomes as the labels and (classification only) the class probabilities."""
    labels = [label for label, _ in outcomes]
    return labels, None if task == "regression" else [p or {} for _, p in outcomes]


def load_version(
    client: Any, name: str, version: str, *, closed_categories: bool, max_rows: int, runtime: Runtime = "auto"
) -> ServedModel:
    """Load one registry version: the sklearn pipeline, its feature schema, its run's metrics and, unless
    `runtime` is "sklearn", its compiled graph when the version passed parity."""
    try:
        mv = client.get_model_version(name, version)
        if mv.run_id is None:
            raise ModelLoadError(f"version {version} of {name!r} has no run: its feature schema is unknown")
        with tempfile.TemporaryDirectory(prefix="bitloop-serve-") as scratch:
            local = download_model(client, name, version, Path(scratch))
            estimator = load_sklearn_model(local)
            example = _input_example(str(local))
        schema = run_schema(client, mv.run_id)
        profile = _reference_profile(client, mv.run_id)
        calibration = _calibration(client, mv.run_id) if schema.task == "classification" else None
        metrics = dict(client.get_run(mv.run_id).data.metrics)
    except ModelLoadError:
        raise
    except UntrustedModel as err:
        raise ModelLoadError(
            f"refusing {name!r} version {version}: {err}",
            public="it is not a skops file of numpy, scikit-learn and SciPy types only",
        ) from err
    except Exception as err:  # anything MLflow, skops or pydantic raises means "cannot serve this version"
        raise ModelLoadError(f"cannot load {name!r} version {version}: {type(err).__name__}: {err}") from err
    record = build_record_model(schema, closed_categories)
    model = ServedModel(
        name=name,
        version=str(version),
        run_id=mv.run_id,
        estimator=estimator,
        schema=schema,
        metrics=metrics,
        data_version=mv.tags.get(Tags.DATA_VERSION),
        record_model=record,
        batch_model=build_batch_model(record, max_rows),
        profile=profile,
        calibration=calibration,
    )
    model.check(example)
    _attach_compiled(model, client, Compilation.from_tags(dict(mv.tags)), runtime, example)
    log.info(
        "model version loaded",
        extra={
            "model": name,
            "version": model.version,
            "runtime": model.runtime,
            "why": model.runtime_detail,
        },
    )
    return model


def _attach_compiled(
    model: ServedModel,
    client: Any,
    compilation: Compilation | None,
    runtime: Runtime,
    example: pd.DataFrame | None,
) -> None:
    """Serve the version's ONNX graph when it passed parity at registration and agrees with scikit-learn
    on the stored sample in this server too; with runtime "compiled", refuse the version otherwise."""
    if runtime == "sklearn":
        model.runtime_detail = "scikit-learn, as BITLOOP_API_RUNTIME=sklearn asks"
        return
    try:
        if compilation is None:
            raise ValueError("the version was registered without a compiled graph")
        if compilation.status == "error":
            raise ValueError(f"it could not be compiled: {compilation.error}")
        if not compilation.servable:
            raise ValueError(
                f"its compiled graph failed parity (max difference {compilation.max_abs_diff}, "
                f"{compilation.label_mismatches} labels differ)"
            )
        compiled = CompiledModel(run_file(client, str(model.run_id), COMPILED_ARTIFACT), model.schema)
        records = model.sample_records(example)
        expected = model._values(records)
        got = compiled.run_records(records)
        scale = 1.0 if model.schema.task == "classification" else max(float(np.abs(expected).max()), 1.0)
        if got.shape != expected.shape or not np.allclose(
            got, expected, rtol=0, atol=SERVER_PARITY_TOLERANCE * scale
        ):
            raise ValueError(
                "its compiled graph disagrees with scikit-learn on the stored sample in this server"
            )
    except Exception as err:  # any failure here leaves a version servable with scikit-learn
        reason = f"{type(err).__name__}: {err}" if not isinstance(err, ValueError) else str(err)
        if runtime == "compiled":
            raise ModelLoadError(
                f"version {model.version} has no usable compiled runtime: {reason[:300]}",
                public="BITLOOP_API_RUNTIME=compiled, and it has no compiled graph that passed parity",
            ) from err
        model.runtime_detail = f"scikit-learn: {reason[:300]}"
        return
    model.compiled = compiled
    difference = compilation.max_abs_diff
    model.runtime_detail = (
        f"ONNX Runtime: parity passed on {compilation.rows} holdout rows (max difference {difference})"
    )


def _input_example(model_dir: str) -> pd.DataFrame | None:
    """The input example logged with the model (MLflow keeps it beside the model files)."""
    from mlflow.models import Model

    try:
        example = Model.load(model_dir).load_input_example(model_dir)
    except Exception as err:  # an example is optional; the profile's sample is checked regardless
        log.warning("the model's input example cannot be read", extra={"error": str(err)[:300]})
        return None
    return example if isinstance(example, pd.DataFrame) else None


def _calibration(client: Any, run_id: str) -> Calibration | None:
    """The run's calibration map; a version without one is estimated from its raw probabilities."""
    try:
        return run_calibration(client, run_id)
    except Exception as err:  # MLflow raises several types for a missing artifact
        log.info(
            "no calibration map: the quality estimate reads raw probabilities", extra={"error": str(err)}
        )
        return None


def _reference_profile(client: Any, run_id: str) -> ReferenceProfile | None:
    """The run's reference profile; a model without one is served, with drift detection off."""
    try:
        return run_profile(client, run_id)
    except Exception as err:  # MLflow raises several types for a missing artifact
        log.warning("no reference profile: drift detection is off for this model", extra={"error": str(err)})
        return None
