"""Sliding-window live quality of the served versions, published as Prometheus gauges.

Every `quality_interval_seconds` the newest predictions of the last `quality_window_seconds` (at
most `quality.max_rows` of params.yaml), joined with the true outcomes sent to `POST /feedback`,
are scored per version and variant by `core.quality`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from api import metrics
from api.manager import ModelManager
from api.model import ServedModel
from api.periodic import Periodic, Shared
from api.settings import ApiSettings
from core.params import PromoteParams, QualityParams
from core.predictions.access import read_labelled
from core.quality import QualityReport, evaluate, limits


class QualityWatcher:
    def __init__(
        self, settings: ApiSettings, manager: ModelManager, quality: QualityParams, promote: PromoteParams
    ) -> None:
        self.settings = settings
        self.manager = manager
        self.quality = quality
        self.promote = promote
        self.last: QualityReport | None = None
        self._series: list[tuple[Any, tuple[str, ...]]] = []
        """The series this model's last report set: the next one removes them (versions leave the
        window), and no other model's."""
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
        name = self.manager.name
        for gauge, labels in self._series:
            gauge.remove(*labels)
        series: list[tuple[Any, tuple[str, ...], float]] = []
        for found in report.versions:
            labels = (name, found.version, found.variant)
            series += [
                (metrics.LABEL_COVERAGE, labels, found.coverage),
                (metrics.LABELLED, labels, found.labelled),
            ]
            if found.lag_seconds is not None:
                series.append((metrics.LABEL_LAG, labels, found.lag_seconds))
            series += [(metrics.LIVE_QUALITY, (name, m, *labels[1:]), v) for m, v in found.realized.items()]
            series += [
                (metrics.ESTIMATED_QUALITY, (name, m, *labels[1:]), v) for m, v in found.estimated.items()
            ]
        for variant, model in served.items():
            if model is None:
                continue
            for metric, value in model.metrics.items():
                series.append((metrics.HOLDOUT_QUALITY, (name, metric, model.version, variant), value))
            for limit in limits(report.task, model.version, model.metrics, self.quality, self.promote):
                better = "higher" if limit.higher_is_better else "lower"
                labels = (name, limit.metric, limit.version, limit.kind, better)
                series.append((metrics.QUALITY_LIMIT, labels, limit.value))
        for gauge, labels, value in series:
            gauge.labels(*labels).set(value)
        self._series = [(gauge, labels) for gauge, labels, _ in series]
        metrics.QUALITY_EVALUATED.labels(name).set(now)
