"""The monitors' stages: logged live inputs against the champion's reference, into MLflow; and the
champion's live quality against its limits (the ground_truth DAG's quality signal).

`python -m pipeline drift --since T0 --until T1 --label RUN` reads the prediction log rows of
[T0, T1), compares them with the reference profile logged with the @champion version, writes
`reports/<model>/drift.json` and `reports/<model>/drift.html`, and logs both to MLflow (experiment
`<model.name>-monitoring`, once per label). Too few rows, or no champion yet, is a clean skip.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import mlflow

from core.drift import DriftReport, detect
from core.params import Params
from core.predictions.access import read_features, read_labelled
from core.quality import evaluate
from core.registry import CHAMPION, Tags, alias_version, connect, run_profile, run_schema
from core.settings import PipelineSettings
from pipeline.workspace import Workspace, write_json

log = logging.getLogger(__name__)


def _summary(report: DriftReport | None, **extra: Any) -> dict[str, Any]:
    if report is None:
        return {"status": "no_champion", "dataset_drift": False, "rows": 0, **extra}
    return {
        "status": report.status,
        "dataset_drift": report.dataset_drift,
        "drift_share": report.drift_share,
        "rows": report.rows,
        "drifted_features": report.drifted_features,
        "scores": {f.name: f.score for f in report.features},
        **extra,
    }


def monitor_drift(
    params: Params,
    workspace: Workspace,
    settings: PipelineSettings,
    prediction_log: str,
    since: datetime,
    until: datetime,
    label: str,
) -> dict[str, Any]:
    """Evaluate one window of live traffic; log the report to MLflow when there was enough of it."""
    client = connect(settings)
    name = params.model.name
    champion = alias_version(client, name, CHAMPION)
    if champion is None:
        log.warning("no @champion to compare with: nothing to monitor yet", extra={"model": name})
        return _summary(None, label=label)
    frame = read_features(
        prediction_log, name, since=since.timestamp(), until=until.timestamp(), limit=params.drift.max_rows
    )
    report = detect(
        run_profile(client, str(champion.run_id)),
        frame,
        params.drift,
        model={"name": name, "version": champion.version},
        window={"since": since.isoformat(), "until": until.isoformat(), "label": label},
    )
    write_json(workspace.reports_dir / "drift.json", report.to_dict())
    (workspace.reports_dir / "drift.html").write_text(report.to_html())
    if report.status == "insufficient_data":
        log.info(
            "too few logged predictions for a verdict: skipped",
            extra={"rows": report.rows, "needed": params.drift.min_samples},
        )
        return _summary(report, label=label, champion_version=champion.version)
    return _summary(
        report, label=label, champion_version=champion.version, mlflow_run_id=_log_run(client, name, report)
    )


def _log_run(client: Any, name: str, report: DriftReport) -> str:
    """One MLflow run per window label: a retried task finds it instead of logging it twice."""
    label = report.window["label"]
    experiment = mlflow.set_experiment(f"{name}-monitoring")
    found = client.search_runs(
        [experiment.experiment_id], f"tags.`{Tags.DRIFT_OF}` = '{label}'", max_results=1
    )
    if found:
        log.info("drift report already logged", extra={"run_id": found[0].info.run_id})
        return str(found[0].info.run_id)
    tags = {
        Tags.DRIFT_OF: label,
        Tags.KIND: "drift-report",
        Tags.DATASET_DRIFT: str(report.dataset_drift).lower(),
        Tags.CHAMPION_VERSION: str(report.model["version"]),
    }
    with mlflow.start_run(run_name=f"drift-{report.window['until']}", tags=tags) as run:
        mlflow.log_params(
            {"rows": report.rows, "since": report.window["since"], "until": report.window["until"]}
        )
        metrics = {"drift_share": report.drift_share, "dataset_drift": float(report.dataset_drift)}
        for feature in report.features:
            if feature.score is not None:
                metrics[f"drift_score.{feature.name}"] = feature.score
            if feature.psi is not None:
                metrics[f"psi.{feature.name}"] = feature.psi
        mlflow.log_metrics(metrics)
        mlflow.log_dict(report.to_dict(), "drift_report.json")
        mlflow.log_text(report.to_html(), "drift_report.html")
    log.info("drift report logged", extra={"run_id": run.info.run_id, "status": report.status})
    return str(run.info.run_id)


def judge_quality(
    params: Params, settings: PipelineSettings, prediction_log: str, since: datetime
) -> dict[str, Any]:
    """The champion's live quality since `since` against its limits (`core.quality`):
    `breached` when a realized figure is past a floor or below its holdout by quality.max_drop."""
    client = connect(settings)
    name = params.model.name
    champion = alias_version(client, name, CHAMPION)
    if champion is None:
        return {"status": "no_champion", "breached": False}
    run_id = str(champion.run_id)
    schema = run_schema(client, run_id)
    holdout = dict(client.get_run(run_id).data.metrics)
    rows = [
        r
        for r in read_labelled(prediction_log, name, since=since.timestamp(), limit=params.quality.max_rows)
        if r.version == champion.version and r.variant == "champion"
    ]
    found = evaluate(
        rows, schema.task, list(schema.classes), params.quality, params.promote, {champion.version: holdout}
    )
    if not found or not found[0].realized:
        labelled = found[0].labelled if found else 0
        return {
            "status": "insufficient_data",
            "breached": False,
            "version": champion.version,
            "labelled": labelled,
        }
    quality = found[0]
    return {
        "status": "breached" if quality.breaches else "ok",
        "breached": bool(quality.breaches),
        "version": champion.version,
        "labelled": quality.labelled,
        "realized": quality.realized,
        "breaches": quality.breaches,
    }
