"""A loaded model version with everything needed to validate, predict and describe it."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel
from threadpoolctl import threadpool_limits

from api.schemas import build_batch_model, build_record_model
from pipeline.schema import DatasetSchema

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A registry version could not be turned into a servable model."""


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
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def classes(self) -> list[Any]:
        return [c.item() if isinstance(c, np.generic) else c for c in getattr(self.estimator, "classes_", [])]

    def frame(self, records: list[dict[str, Any]]) -> pd.DataFrame:
        """Records (validated, keyed by feature name) as the frame the pipeline was trained on."""
        frame = pd.DataFrame.from_records(records, columns=self.schema.feature_names)
        for spec in self.schema.features:
            if spec.kind == "numeric":
                frame[spec.name] = frame[spec.name].astype("float64")
            else:
                frame[spec.name] = frame[spec.name].astype(object)
        return frame

    def predict(self, records: list[dict[str, Any]]) -> tuple[list[Any], list[dict[str, float]] | None]:
        """Predictions (and class probabilities for classification) for validated records."""
        x = self.frame(records)
        with threadpool_limits(limits=1):
            if self.schema.task == "regression":
                return [float(v) for v in self.estimator.predict(x)], None
            proba = self.estimator.predict_proba(x)
        classes = self.classes
        labels = [classes[i] for i in np.argmax(proba, axis=1)]
        names = [str(c) for c in classes]
        return labels, [dict(zip(names, map(float, row), strict=True)) for row in proba]


def load_version(
    client: Any, name: str, version: str, *, closed_categories: bool, max_rows: int
) -> ServedModel:
    """Load one registry version: the sklearn pipeline, its feature schema and its run's metrics."""
    import mlflow

    try:
        mv = client.get_model_version(name, version)
        with tempfile.TemporaryDirectory(prefix="bitloop-serve-") as scratch:
            estimator = mlflow.sklearn.load_model(f"models:/{name}/{version}", dst_path=scratch)
        if mv.run_id is None:
            raise ModelLoadError(f"version {version} of {name!r} has no run: its feature schema is unknown")
        schema = DatasetSchema.model_validate(
            mlflow.artifacts.load_dict(f"runs:/{mv.run_id}/feature_schema.json")
        )
        metrics = dict(client.get_run(mv.run_id).data.metrics)
    except ModelLoadError:
        raise
    except Exception as err:  # anything MLflow, skops or pydantic raises means "cannot serve this version"
        raise ModelLoadError(f"cannot load {name!r} version {version}: {type(err).__name__}: {err}") from err
    record = build_record_model(schema, closed_categories)
    return ServedModel(
        name=name,
        version=str(version),
        run_id=mv.run_id,
        estimator=estimator,
        schema=schema,
        metrics=metrics,
        data_version=mv.tags.get("bitloop.data_version"),
        record_model=record,
        batch_model=build_batch_model(record, max_rows),
    )
