"""Drift detection: live feature values against the champion's reference profile, as one report.

One implementation, used by the model server (sliding-window gauges) and by the drift
monitor DAG (reports in MLflow, the asset event that triggers retraining). Each feature is
tested by `core.drift_statistics`; the dataset drifts when at least `drift_share` of the
tested features drift.
"""

from __future__ import annotations

import html
from dataclasses import asdict, field
from datetime import UTC, datetime
from typing import Any, Literal

import pandas as pd
from pydantic import computed_field
from pydantic.dataclasses import dataclass

from core.drift_statistics import FeatureDrift, feature_drift
from core.params import DriftParams
from core.profile import ReferenceProfile

Status = Literal["drift", "no_drift", "insufficient_data"]


@dataclass(frozen=True)
class DriftReport:
    """One window's verdict: what /drift answers, the drift monitor logs and the gauges show."""

    status: Status
    rows: int
    reference_rows: int
    features: list[FeatureDrift]
    drift_share: float
    """Share of tested features that drift (0 when none could be tested)."""
    threshold_share: float
    evaluated_at: str
    model: dict[str, Any] = field(default_factory=dict)
    window: dict[str, Any] = field(default_factory=dict)
    min_rows: int = 0
    """Rows the window needs before any verdict (drift.min_samples)."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def dataset_drift(self) -> bool:
        return self.status == "drift"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def drifted_features(self) -> list[str]:
        return [f.name for f in self.features if f.drifted]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def message(self) -> str:
        """The verdict in words, for people reading /drift or the report."""
        if self.rows < self.min_rows:
            return f"not enough data yet: {self.rows} of {self.min_rows} rows"
        tested = sum(f.tested for f in self.features)
        if self.status == "insufficient_data":
            return f"no feature has enough values to test yet ({self.rows} rows)"
        verdict = "dataset drift" if self.dataset_drift else "no dataset drift"
        return f"{verdict}: {len(self.drifted_features)} of {tested} tested features drift ({self.rows} rows)"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dataset_drift"] = self.dataset_drift
        out["drifted_features"] = self.drifted_features
        out["message"] = self.message
        return out

    def to_html(self) -> str:
        return render_html(self)


def detect(
    profile: ReferenceProfile,
    current: pd.DataFrame,
    config: DriftParams,
    *,
    model: dict[str, Any] | None = None,
    window: dict[str, Any] | None = None,
) -> DriftReport:
    """Compare a frame of live feature values with a reference profile (`core.profile`)."""
    features = [
        feature_drift(
            name,
            ref,
            current[name] if name in current else pd.Series([], dtype=object),
            profile.rows,
            config,
        )
        for name, ref in profile.features.items()
    ]
    tested = [f for f in features if f.tested]
    share = sum(f.drifted for f in tested) / len(tested) if tested else 0.0
    status: Status
    if len(current) < config.min_samples or not tested:
        status = "insufficient_data"
    else:
        status = "drift" if share >= config.drift_share else "no_drift"
    return DriftReport(
        status=status,
        rows=len(current),
        reference_rows=profile.rows,
        features=features,
        drift_share=share,
        threshold_share=config.drift_share,
        evaluated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        model=model or {},
        window=window or {},
        min_rows=config.min_samples,
    )


def render_html(report: DriftReport) -> str:
    """A self-contained, readable HTML page of the report."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return html.escape("" if value is None else str(value))

    verdict = {
        "drift": "Dataset drift detected",
        "no_drift": "No dataset drift",
        "insufficient_data": report.message[:1].upper() + report.message[1:],
    }[report.status]
    rows = "\n".join(
        f"<tr class='{'drift' if f.drifted else ''}'><td>{cell(f.name)}</td><td>{f.kind}</td>"
        f"<td>{f.method}</td><td>{cell(f.score)}</td><td>{cell(f.threshold)}</td>"
        f"<td>{'yes' if f.drifted else 'no'}</td><td>{cell(f.psi)}</td><td>{f.sample_size}</td>"
        f"<td>{f.missing_rate:.1%} / {f.reference_missing_rate:.1%}</td>"
        f"<td>{cell(', '.join(f.unseen_categories))}</td></tr>"
        for f in report.features
    )
    model = ", ".join(f"{k}={v}" for k, v in report.model.items())
    window = ", ".join(f"{k}={v}" for k, v in report.window.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>bitloop drift report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ padding: .3rem .7rem; border-bottom: 1px solid #ddd; }}
th {{ text-align: left; }} tr.drift td {{ background: #fde2e1; }}
.verdict {{ font-size: 1.3rem; font-weight: 600; }}
</style></head><body>
<h1>Drift report</h1>
<p class="verdict">{verdict}: {report.drift_share:.0%} of tested features drifted
(threshold {report.threshold_share:.0%}).</p>
<p>{report.rows} live rows against {report.reference_rows} reference rows;
evaluated {cell(report.evaluated_at)}.<br>Model: {cell(model)}<br>Window: {cell(window)}</p>
<table><thead><tr><th>feature</th><th>kind</th><th>test</th><th>score</th><th>threshold</th>
<th>drifted</th><th>PSI</th><th>values</th><th>missing (live / reference)</th><th>unseen categories</th>
</tr></thead><tbody>
{rows}
</tbody></table>
<p>p-value tests (ks, chi2) drift below their threshold; distances (wasserstein, jensenshannon)
drift at or above it.</p>
</body></html>
"""
