"""The per-feature drift statistics: one feature's live values against its reference profile entry.

Per feature, with the widely used defaults (those of Evidently, for instance):
- up to `large_sample` values: two-sample Kolmogorov-Smirnov (numeric) or chi-squared
  homogeneity (categorical); the feature drifts when p < `p_value`;
- more values: Wasserstein distance divided by the reference standard deviation (numeric) or
  Jensen-Shannon distance in base 2 (categorical, bounded by [0, 1]); the feature drifts when
  the distance reaches `distance_threshold`;
- PSI over the reference deciles (numeric) or categories, reported alongside.
A feature with fewer than `min_samples` values is reported and not tested.
"""

from __future__ import annotations

from dataclasses import asdict, field
from typing import Literal

import numpy as np
import pandas as pd
from pydantic.dataclasses import dataclass
from scipy import stats
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr

from core.params import DriftParams
from core.profile import FeatureProfile

Method = Literal["ks", "chi2", "wasserstein", "jensenshannon", "insufficient"]
PSI_EPSILON = 1e-4  # floor for empty bins, so PSI stays finite
STD_FLOOR = 1e-3  # a constant reference feature still gets a finite normalised distance


@dataclass(frozen=True)  # pydantic's: the model server answers with it as is
class FeatureDrift:
    name: str
    kind: str
    method: Method
    score: float | None
    """The p-value (ks, chi2) or the distance (wasserstein, jensenshannon)."""
    threshold: float | None
    drifted: bool
    psi: float | None
    sample_size: int
    missing_rate: float
    reference_missing_rate: float
    unseen_categories: list[str] = field(default_factory=list)

    @property
    def tested(self) -> bool:
        return self.method != "insufficient"


def stability_index(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins."""
    r = np.clip(reference, PSI_EPSILON, None)
    c = np.clip(current, PSI_EPSILON, None)
    return float(np.sum(rel_entr(c, r) + rel_entr(r, c)))


def _numeric(name: str, ref: FeatureProfile, values: np.ndarray, config: DriftParams) -> FeatureDrift:
    sample = np.asarray(ref.sample, dtype=float)
    if len(values) > config.large_sample:
        score = float(stats.wasserstein_distance(sample, values) / max(float(np.std(sample)), STD_FLOOR))
        method: Method = "wasserstein"
        threshold, drifted = config.distance_threshold, score >= config.distance_threshold
    else:
        score = float(stats.ks_2samp(sample, values).pvalue)
        method, threshold, drifted = "ks", config.p_value, score < config.p_value
    edges = np.asarray(ref.bin_edges, dtype=float)
    psi = None
    if len(edges) > 1:
        edges = np.concatenate([[-np.inf], edges[1:-1], [np.inf]])
        counts = np.histogram(values, bins=edges)[0]
        psi = stability_index(np.asarray(ref.bin_shares, dtype=float), counts / counts.sum())
    return FeatureDrift(
        name, "numeric", method, score, threshold, drifted, psi, len(values), 0.0, ref.missing_rate
    )


def _categorical(
    name: str, ref: FeatureProfile, values: pd.Series, reference_rows: int, config: DriftParams
) -> FeatureDrift:
    reference_shares = ref.frequencies
    current_counts = values.value_counts()
    categories = sorted(set(reference_shares) | {str(c) for c in current_counts.index})
    unseen = sorted(str(c) for c in current_counts.index if str(c) not in reference_shares)
    r = np.array([reference_shares.get(c, 0.0) for c in categories])
    c_counts = np.array([float(current_counts.get(c, 0)) for c in categories])
    c = c_counts / c_counts.sum()
    if len(values) > config.large_sample:
        score = float(jensenshannon(r, c, base=2))
        method: Method = "jensenshannon"
        threshold, drifted = config.distance_threshold, score >= config.distance_threshold
    else:
        reference_counts = r * max(round(reference_rows * (1 - ref.missing_rate)), 1)
        table = np.vstack([reference_counts, c_counts])
        table = table[:, table.sum(axis=0) > 0]
        score = 1.0 if table.shape[1] < 2 else float(stats.chi2_contingency(table).pvalue)
        method, threshold, drifted = "chi2", config.p_value, score < config.p_value
    return FeatureDrift(
        name=name,
        kind="categorical",
        method=method,
        score=score,
        threshold=threshold,
        drifted=drifted,
        psi=stability_index(r, c),
        sample_size=len(values),
        missing_rate=0.0,
        reference_missing_rate=ref.missing_rate,
        unseen_categories=unseen,
    )


def feature_drift(
    name: str, ref: FeatureProfile, column: pd.Series, reference_rows: int, config: DriftParams
) -> FeatureDrift:
    """Test one feature's current values against its reference profile entry."""
    missing_rate = float(column.isna().mean()) if len(column) else 0.0
    present = column.dropna()
    if ref.kind == "numeric":
        values = pd.to_numeric(present, errors="coerce").dropna().to_numpy(dtype=float)
        size = len(values)
    else:
        strings = present.astype(str)
        size = len(strings)
    if size < config.min_samples or (ref.kind == "numeric" and not ref.sample):
        return FeatureDrift(
            name=name,
            kind=ref.kind,
            method="insufficient",
            score=None,
            threshold=None,
            drifted=False,
            psi=None,
            sample_size=size,
            missing_rate=missing_rate,
            reference_missing_rate=ref.missing_rate,
        )
    if ref.kind == "numeric":
        result = _numeric(name, ref, values, config)
    else:
        result = _categorical(name, ref, strings, reference_rows, config)
    return FeatureDrift(**{**asdict(result), "missing_rate": missing_rate})
