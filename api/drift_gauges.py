"""Sliding-window drift of the served champion's inputs, published as Prometheus gauges.

Every `drift_interval_seconds` the newest rows of the prediction log (at most `drift.max_rows`
from the last `drift_window_seconds`) are compared with the champion's reference profile by
`core.drift`, the same code the drift monitor DAG runs.
"""

from __future__ import annotations

import time
from typing import Any

from api import metrics
from api.manager import ModelManager
from api.periodic import Periodic, Shared
from api.settings import ApiSettings
from core.drift import DriftReport, detect
from core.params import DriftParams
from core.predictions.access import read_features
from core.profile import ReferenceProfile


class DriftWatcher:
    def __init__(self, settings: ApiSettings, manager: ModelManager, config: DriftParams) -> None:
        self.settings = settings
        self.manager = manager
        self.config = config
        self.last: DriftReport | None = None
        self.evaluate_shared = Shared(self.evaluate)
        self._watcher = Periodic("drift evaluation", settings.drift_interval_seconds, self.evaluate_shared)

    def start(self) -> None:
        self._watcher.start()

    async def stop(self) -> None:
        await self._watcher.stop()

    def evaluate(self) -> DriftReport | None:
        """Evaluate the window now and publish it; None while no champion with a profile is served.

        Called through `evaluate_shared`, so two evaluations never run at once."""
        champion = self.manager.champion
        if champion is None or champion.profile is None:
            return None
        return self._evaluate(champion.name, champion.version, champion.profile)

    def _evaluate(self, name: str, version: str, profile: ReferenceProfile) -> DriftReport:
        now = time.time()
        frame = read_features(
            self.settings.prediction_log_url,
            name,
            since=now - self.settings.drift_window_seconds,
            limit=self.config.max_rows,
        )
        report = detect(
            profile,
            frame,
            self.config,
            model={"name": name, "version": version},
            window={"seconds": self.settings.drift_window_seconds, "max_rows": self.config.max_rows},
        )
        publish(report, now)
        self.last = report
        return report


_PER_FEATURE: dict[str, list[tuple[Any, tuple[str, ...]]]] = {}
"""The per-feature series each model's last report set: the next report of that model removes them
(a feature's test changes with the sample size), and no other model's."""


def publish(report: DriftReport, evaluated_at: float) -> None:
    model = str(report.model["name"])
    for gauge, labels in _PER_FEATURE.pop(model, []):
        gauge.remove(*labels)
    series: list[tuple[Any, tuple[str, ...], float]] = []
    for feature in report.features:
        if feature.score is None or feature.threshold is None:
            continue
        series += [
            (metrics.DRIFT_SCORE, (model, feature.name, feature.method), feature.score),
            (metrics.DRIFT_THRESHOLD, (model, feature.name, feature.method), feature.threshold),
            (metrics.FEATURE_DRIFTED, (model, feature.name), float(feature.drifted)),
        ] + ([(metrics.FEATURE_PSI, (model, feature.name), feature.psi)] if feature.psi is not None else [])
    for gauge, labels, value in series:
        gauge.labels(*labels).set(value)
    _PER_FEATURE[model] = [(gauge, labels) for gauge, labels, _ in series]
    metrics.DATASET_DRIFT.labels(model).set(float(report.dataset_drift))
    metrics.DRIFT_SHARE.labels(model).set(report.drift_share)
    metrics.DRIFT_SHARE_THRESHOLD.labels(model).set(report.threshold_share)
    metrics.DRIFT_ROWS.labels(model).set(report.rows)
    metrics.DRIFT_MIN_ROWS.labels(model).set(report.min_rows)
    metrics.DRIFT_EVALUATED.labels(model).set(evaluated_at)
