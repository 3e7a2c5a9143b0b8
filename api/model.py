"""A loaded model version with everything needed to validate, predict and describe it."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

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
    profile: dict[str, Any] | None = None
    """The training data's reference profile, which drift detection compares live inputs with."""
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def typical(self, feature: str) -> float | str | None:
        """The feature's training median or most frequent category, from the reference profile."""
        entry = (self.profile or {}).get("features", {}).get(feature) or {}
        if entry.get("sample"):
            return float(np.median(entry["sample"]))
        frequencies: dict[str, float] = entry.get("frequencies") or {}
        return max(frequencies, key=lambda category: frequencies[category]) if frequencies else None

    @property
    def classes(self) -> list[Any]:
        return [c.item() if isinstance(c, np.generic) else c for c in getattr(self.estimator, "classes_", [])]

    def frame(self, records: list[dict[str, Any]]) -> pd.DataFrame:
        """Records (validated, keyed by feature name) as the frame the pipeline was trained on."""
        # Column by column into typed arrays: several times faster than per-column astype.
        return pd.DataFrame(
            {
                spec.name: np.array(
                    [r[spec.name] for r in records], dtype=float if spec.kind == "numeric" else object
                )
                for spec in self.schema.features
            }
        )

    def predict(self, records: list[dict[str, Any]]) -> tuple[list[Any], list[dict[str, float]] | None]:
        """Predictions (and class probabilities for classification) for validated records."""
        x = self.frame(records)
        if self.schema.task == "regression":
            return [float(v) for v in self.estimator.predict(x)], None
        proba = self.estimator.predict_proba(x)
        classes = self.classes
        labels = [classes[i] for i in np.argmax(proba, axis=1).tolist()]
        names = [str(c) for c in classes]
        return labels, [dict(zip(names, row, strict=True)) for row in proba.tolist()]


def load_version(
    client: Any, name: str, version: str, *, closed_categories: bool, max_rows: int
) -> ServedModel:
    """Load one registry version: the sklearn pipeline, its feature schema and its run's metrics."""
    import mlflow

    # Every download names the client's server: MLflow's global tracking URI may point elsewhere.
    uri = client.tracking_uri
    try:
        mv = client.get_model_version(name, version)
        if mv.run_id is None:
            raise ModelLoadError(f"version {version} of {name!r} has no run: its feature schema is unknown")
        with tempfile.TemporaryDirectory(prefix="bitloop-serve-") as scratch:
            location = client.get_model_version_download_uri(name, version)
            local = mlflow.artifacts.download_artifacts(
                location, dst_path=f"{scratch}/model", tracking_uri=uri
            )
            estimator = mlflow.sklearn.load_model(local)
            schema_file = mlflow.artifacts.download_artifacts(
                run_id=mv.run_id,
                artifact_path="feature_schema.json",
                dst_path=f"{scratch}/schema",
                tracking_uri=uri,
            )
            schema = DatasetSchema.model_validate_json(Path(schema_file).read_text())
            profile = _reference_profile(mv.run_id, uri)
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
        profile=profile,
    )


def _reference_profile(run_id: str, tracking_uri: str) -> dict[str, Any] | None:
    """The run's reference profile; a model without one is served, with drift detection off."""
    from pipeline.monitor import load_reference

    try:
        return load_reference(run_id, tracking_uri)
    except Exception as err:  # MLflow raises several types for a missing artifact
        log.warning("no reference profile: drift detection is off for this model", extra={"error": str(err)})
        return None
