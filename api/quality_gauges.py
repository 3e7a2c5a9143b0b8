"""Sliding-window live quality of the served versions, published as Prometheus gauges.

Every `quality_interval_seconds` the newest predictions of the last `quality_window_seconds` (at
most `quality.max_rows` of params.yaml), joined with the true outcomes sent to `POST /feedback`,
are scored per version and variant by `core.quality`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from api import metrics
from api.manager import ModelManager
from api.model import ServedModel
from api.periodic import Periodic, Shared
from api.settings import ApiSettings
from core.params import PromoteParams, QualityParams
from core.predictions.access import read_labelled
from core.quality import QualityReport, evaluate, limits

VERSION_GAUGES = (metrics.LABEL_COVERAGE, metrics.LABEL_LAG, metrics.LABELLED)
METRIC_GAUGES = (
    metrics.LIVE_QUALITY,
    metrics.ESTIMATED_QUALITY,
    metrics.HOLDOUT_QUALITY,
    metrics.QUALITY_LIMIT,
)


class QualityWatcher:
    def __init__(
        self, settings: ApiSettings, manager: ModelManager, quality: QualityParams, promote: PromoteParams
    ) -> None:
        self.settings = settings
        self.manager = manager
        self.quality = quality
        self.promote = promote
        self.last: QualityReport | None = None
        self.evaluate_shared = Shared(self.evaluate)
        self._watcher = Periodic(
            "quality evaluation", settings.quality_interval_seconds, self.evaluate_shared
        )

    def start(self) -> None:
        self._watcher.start()

    async def stop(self) -> None:
        await self._watcher.stop()

    def evaluate(self) -> QualityReport | None:
        """Score the window now and publish it; None while no champion is served (its task and
        classes say how outcomes are scored). Called through `evaluate_shared`: one at a time."""
        champion = self.manager.champion
        if champion is None:
            return None
        served = {"champion": champion, "challenger": self.manager.challenger}
        now = time.time()
        rows = read_labelled(
            self.settings.prediction_log_url,
            champion.name,
            since=now - self.settings.quality_window_seconds,
            limit=self.quality.max_rows,
        )
        schema = champion.schema
        holdouts = {m.version: m.metrics for m in served.values() if m is not None}
        calibrations = {m.version: m.calibration for m in served.values() if m is not None and m.calibration}
        report = QualityReport(
            model_name=champion.name,
            task=schema.task,
            primary_metric=self.promote.primary_metric(schema.task),
            evaluated_at=datetime.fromtimestamp(now, UTC).isoformat(),
            window_seconds=self.settings.quality_window_seconds,
            max_rows=self.quality.max_rows,
            min_labelled=self.quality.min_labelled,
            versions=evaluate(
                rows, schema.task, list(schema.classes), self.quality, self.promote, holdouts, calibrations
            ),
        )
        self._publish(report, served, now)
        self.last = report
        return report

    def _publish(self, report: QualityReport, served: dict[str, ServedModel | None], now: float) -> None:
        for gauge in (*VERSION_GAUGES, *METRIC_GAUGES):
            gauge.clear()  # versions leave the window: their series go with them
        for found in report.versions:
            labels = (found.version, found.variant)
            metrics.LABEL_COVERAGE.labels(*labels).set(found.coverage)
            metrics.LABELLED.labels(*labels).set(found.labelled)
            if found.lag_seconds is not None:
                metrics.LABEL_LAG.labels(*labels).set(found.lag_seconds)
            for metric, value in found.realized.items():
                metrics.LIVE_QUALITY.labels(metric, *labels).set(value)
            for metric, value in found.estimated.items():
                metrics.ESTIMATED_QUALITY.labels(metric, *labels).set(value)
        for variant, model in served.items():
            if model is None:
                continue
            for metric, value in model.metrics.items():
                metrics.HOLDOUT_QUALITY.labels(metric, model.version, variant).set(value)
            for limit in limits(report.task, model.version, model.metrics, self.quality, self.promote):
                better = "higher" if limit.higher_is_better else "lower"
                metrics.QUALITY_LIMIT.labels(limit.metric, limit.version, limit.kind, better).set(limit.value)
        metrics.QUALITY_EVALUATED.set(now)
