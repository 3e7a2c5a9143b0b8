"""Sliding-window drift of the served champion's inputs, published as Prometheus gauges.

Every `drift_interval_seconds` the newest rows of the prediction log (at most `drift.max_rows`
from the last `drift_window_seconds`) are compared with the champion's reference profile by
`core.drift`, the same code the drift monitor DAG runs.
"""

from __future__ import annotations

import time

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


def publish(report: DriftReport, evaluated_at: float) -> None:
    for gauge in (metrics.DRIFT_SCORE, metrics.DRIFT_THRESHOLD, metrics.FEATURE_DRIFTED, metrics.FEATURE_PSI):
        gauge.clear()  # a feature's test changes with the sample size: drop the old method's series
    for feature in report.features:
        if feature.score is None or feature.threshold is None:
            continue
        metrics.DRIFT_SCORE.labels(feature.name, feature.method).set(feature.score)
        metrics.DRIFT_THRESHOLD.labels(feature.name, feature.method).set(feature.threshold)
        metrics.FEATURE_DRIFTED.labels(feature.name).set(float(feature.drifted))
        if feature.psi is not None:
            metrics.FEATURE_PSI.labels(feature.name).set(feature.psi)
    metrics.DATASET_DRIFT.set(float(report.dataset_drift))
    metrics.DRIFT_SHARE.set(report.drift_share)
    metrics.DRIFT_SHARE_THRESHOLD.set(report.threshold_share)
    metrics.DRIFT_ROWS.set(report.rows)
    metrics.DRIFT_MIN_ROWS.set(report.min_rows)
    metrics.DRIFT_EVALUATED.set(evaluated_at)
