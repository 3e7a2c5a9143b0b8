"""Record what one training run did: data version, champion before and after, metrics, decision."""

from __future__ import annotations

import logging
from typing import Any

import mlflow

from pipeline.params import Params
from pipeline.registry import Tags, connect
from pipeline.settings import PipelineSettings
from pipeline.workspace import Workspace, read_json

log = logging.getLogger(__name__)


def summarize(
    params: Params, workspace: Workspace, settings: PipelineSettings, run_label: str
) -> dict[str, Any]:
    """Log (once per `run_label`) an MLflow run summarising the latest promotion decision."""
    client = connect(settings)
    report = read_json(workspace.promotion_file)
    version = read_json(workspace.version_file)
    before = (report.get("champion") or {}).get("version")
    candidate = (report.get("candidate") or {}).get("version")
    after = candidate if report.get("promoted") else before
    if report.get("already_champion"):
        before = after = candidate
    summary = {
        "run": run_label,
        "data_version": version["version"],
        "data_md5": version["md5"],
        "champion_before": before,
        "champion_after": after,
        "promoted": bool(report.get("promoted")),
        "reason": report.get("reason"),
        "metric": report.get("metric"),
        "candidate_metrics": (report.get("candidate") or {}).get("metrics"),
        "champion_metrics": (report.get("champion") or {}).get("metrics"),
    }
    experiment = mlflow.set_experiment(params.model.name)
    found = client.search_runs(
        [experiment.experiment_id], f"tags.`{Tags.SUMMARY_OF}` = '{run_label}'", max_results=1
    )
    if found:
        log.info("summary already recorded", extra={"run_id": found[0].info.run_id})
        return summary | {"mlflow_run_id": found[0].info.run_id}
    with mlflow.start_run(
        run_name=f"training-summary-{version['version']}",
        tags={Tags.SUMMARY_OF: run_label, Tags.KIND: "training-summary"},
    ) as run:
        mlflow.log_params(
            {
                "data_version": version["version"],
                "champion_before": before or "none",
                "champion_after": after or "none",
                "promoted": summary["promoted"],
            }
        )
        for name, value in (summary["candidate_metrics"] or {}).items():
            mlflow.log_metric(f"candidate_{name}", value)
        mlflow.log_dict(summary, "training_summary.json")
        mlflow.log_dict(report, "promotion.json")
    log.info("training summary", extra=summary)
    return summary | {"mlflow_run_id": run.info.run_id}
