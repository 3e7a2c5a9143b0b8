"""Record what one training run did: data version, champion before and after, metrics, decision."""

from __future__ import annotations

import logging
from typing import Any

import mlflow

from core.params import Params
from core.registry import Tags, connect
from core.rollout import last_outcome
from core.settings import PipelineSettings
from pipeline.data.store import DatasetVersion
from pipeline.stages.reports import PromotionReport
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)


def summarize(
    params: Params, workspace: Workspace, settings: PipelineSettings, run_label: str
) -> dict[str, Any]:
    """Log (once per `run_label`) an MLflow run summarising the latest promotion decision."""
    client = connect(settings)
    report = PromotionReport.read(workspace.promotion_file)
    version = DatasetVersion.from_file(workspace.version_file)
    before = None if report.champion is None else report.champion.version
    candidate = None if report.candidate is None else report.candidate.version
    canary = candidate if report.promoted and report.canary is not None else None
    after = candidate if report.promoted and canary is None else before
    if report.already_champion:
        before = after = candidate
    summary = {
        "run": run_label,
        "data_version": version.label,
        "data_md5": version.md5,
        "champion_before": before,
        "champion_after": after,
        "canary": canary,
        "canary_share": None if report.canary is None else report.canary.share,
        "last_rollout": last_outcome(dict(client.get_registered_model(params.model.name).tags))
        if candidate is not None
        else None,
        "promoted": report.promoted,
        "reason": report.reason,
        "metric": report.metric,
        "candidate_metrics": None if report.candidate is None else report.candidate.metrics,
        "champion_metrics": None if report.champion is None else report.champion.metrics,
    }
    experiment = mlflow.set_experiment(params.model.name)
    found = client.search_runs(
        [experiment.experiment_id], f"tags.`{Tags.SUMMARY_OF}` = '{run_label}'", max_results=1
    )
    if found:
        log.info("summary already recorded", extra={"run_id": found[0].info.run_id})
        return summary | {"mlflow_run_id": found[0].info.run_id}
    with mlflow.start_run(
        run_name=f"training-summary-{version.label}",
        tags={Tags.SUMMARY_OF: run_label, Tags.KIND: "training-summary"}
        | ({Tags.CANARY_VERSION: canary} if canary else {}),
    ) as run:
        mlflow.log_params(
            {
                "data_version": version.label,
                "champion_before": before or "none",
                "champion_after": after or "none",
                "promoted": summary["promoted"],
            }
        )
        for name, value in (summary["candidate_metrics"] or {}).items():
            mlflow.log_metric(f"candidate_{name}", value)
        mlflow.log_dict(summary, "training_summary.json")
        mlflow.log_dict(report.model_dump(exclude_unset=True), "promotion.json")
    log.info("training summary", extra=summary)
    return summary | {"mlflow_run_id": run.info.run_id}
