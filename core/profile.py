"""The reference profile of the training features that drift detection compares against.

`train` writes it, `register` logs it with every candidate (`reference_profile.json`), and the
drift monitor and the model server read it back through `ReferenceProfile`.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from core.schema import DatasetSchema

SAMPLE_SIZE = 5000
BINS = 10


class FeatureProfile(BaseModel):
    """One feature: its missing rate, and a sample with decile bins (numeric) or shares (categorical)."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["numeric", "categorical"]
    missing_rate: float
    mean: float | None = None
    std: float | None = None
    bin_edges: list[float] = []
    bin_shares: list[float] = []
    sample: list[float] = []
    """Sorted, at most SAMPLE_SIZE values."""
    frequencies: dict[str, float] = {}


class TargetRange(BaseModel):
    model_config = ConfigDict(frozen=True)
    min: float
    max: float


class ReferenceProfile(BaseModel):
    model_config = ConfigDict(frozen=True)
    rows: int
    features: dict[str, FeatureProfile]
    target: TargetRange | None = None
    """A regression's training target range: the model server scales its predicted-value histogram by it."""

    def typical(self, feature: str) -> float | str | None:
        """The feature's training median or most frequent category."""
        entry = self.features.get(feature)
        if entry is None:
            return None
        if entry.sample:
            return float(np.median(entry.sample))
        return max(entry.frequencies, key=lambda c: entry.frequencies[c]) if entry.frequencies else None

    def to_json(self) -> dict[str, Any]:
        """The file's content: only the fields each kind of feature has."""
        return self.model_dump(exclude_unset=True)


def build_profile(
    frame: pd.DataFrame, schema: DatasetSchema, seed: int, target: pd.Series | None = None
) -> ReferenceProfile:
    """Per feature: a fixed-size sample and decile bins (numeric) or frequencies (categorical).

    For a regression, the training target's range too: the model server scales its
    predicted-value histogram by it, so the buckets fit any target's units.
    """
    features: dict[str, Any] = {}
    rng = np.random.default_rng(seed)
    for spec in schema.features:
        series = frame[spec.name]
        entry: dict[str, Any] = {"kind": spec.kind, "missing_rate": float(series.isna().mean())}
        filled = series.dropna()
        if spec.kind == "numeric":
            values = filled.to_numpy(dtype=float)
            sample = values if len(values) <= SAMPLE_SIZE else rng.choice(values, SAMPLE_SIZE, replace=False)
            edges = (
                np.unique(np.quantile(values, np.linspace(0, 1, BINS + 1))) if len(values) else np.array([])
            )
            counts = np.histogram(values, bins=edges)[0] if len(edges) > 1 else np.array([len(values)])
            entry.update(
                mean=float(values.mean()) if len(values) else None,
                std=float(values.std()) if len(values) else None,
                bin_edges=edges.tolist(),
                bin_shares=(counts / max(counts.sum(), 1)).tolist(),
                sample=np.sort(sample).tolist(),
            )
        else:
            shares = filled.astype(str).value_counts(normalize=True).sort_index()
            entry["frequencies"] = {str(k): float(v) for k, v in shares.items()}
        features[spec.name] = entry
    profile: dict[str, Any] = {"rows": len(frame), "features": features}
    if schema.task == "regression" and target is not None and target.notna().any():
        profile["target"] = {"min": float(target.min()), "max": float(target.max())}
    return ReferenceProfile.model_validate(profile)
