"""Score candidates on the holdout: metrics, plots and feature importance."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from sklearn import metrics as skm
from sklearn.inspection import permutation_importance
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from core.calibration import CALIBRATION_FILE, fit_calibration
from core.model_metrics import best_candidate, score
from core.params import Params
from core.schema import DatasetSchema
from pipeline.stages.candidates import load_candidate
from pipeline.workspace import Workspace, write_json

log = logging.getLogger(__name__)
PNG_METADATA = {"Software": None}  # keeps PNG bytes identical across runs


def feature_importance(
    model: Pipeline, frame: pd.DataFrame, schema: DatasetSchema, repeats: int, seed: int
) -> dict[str, float]:
    """Permutation importance on the holdout, per raw input feature."""
    scoring = "roc_auc" if schema.task == "classification" and len(schema.classes) == 2 else None
    with threadpool_limits(limits=1):
        result = permutation_importance(
            model,
            frame[schema.feature_names],
            frame[schema.target],
            n_repeats=repeats,
            random_state=seed,
            scoring=scoring,
            n_jobs=1,
        )
    return {
        name: round(float(v), 6)
        for name, v in zip(schema.feature_names, result.importances_mean, strict=True)
    }


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=90, metadata=PNG_METADATA)
    plt.close(fig)


def plot_diagnostics(model: Pipeline, frame: pd.DataFrame, schema: DatasetSchema, path: Path) -> None:
    """Confusion matrix (classification) or residuals against predictions (regression)."""
    x, y = frame[schema.feature_names], frame[schema.target]
    with threadpool_limits(limits=1):
        predicted = model.predict(x)
    fig, ax = plt.subplots(figsize=(5, 4))
    if schema.task == "classification":
        skm.ConfusionMatrixDisplay.from_predictions(y, predicted, ax=ax, colorbar=False)
        ax.set_title("Confusion matrix (holdout)")
    else:
        ax.scatter(predicted, y - predicted, s=6, alpha=0.5)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set(xlabel="predicted", ylabel="residual", title="Residuals (holdout)")
    fig.tight_layout()
    _save(fig, path)


def plot_importance(importance: dict[str, float], path: Path) -> None:
    ordered = sorted(importance.items(), key=lambda kv: kv[1])[-20:]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(ordered) + 1.2))
    ax.barh([k for k, _ in ordered], [v for _, v in ordered])
    ax.set(xlabel="mean score drop when shuffled", title="Permutation importance (holdout)")
    fig.tight_layout()
    _save(fig, path)


def evaluate(params: Params, workspace: Workspace) -> dict[str, Any]:
    """Score every candidate on the holdout; write per-candidate reports and metrics.json."""
    schema = DatasetSchema.read(workspace.schema_file)
    test = pd.read_parquet(workspace.test_file)
    primary = params.promote.primary_metric(schema.task)
    results: dict[str, dict[str, float]] = {}
    for name in params.train.candidates:
        model = load_candidate(workspace.candidate_file(name))
        out = workspace.evaluation_dir / name
        out.mkdir(parents=True, exist_ok=True)
        results[name] = score(model, test, schema)
        importance = feature_importance(
            model, test, schema, params.evaluate.importance_repeats, params.train.seed
        )
        plot_diagnostics(
            model,
            test,
            schema,
            out / ("confusion_matrix.png" if schema.task == "classification" else "residuals.png"),
        )
        plot_importance(importance, out / "feature_importance.png")
        write_json(out / "feature_importance.json", importance)
        write_json(out / "metrics.json", results[name])
        if schema.task == "classification":  # logged with the version: corrects its estimate later
            with threadpool_limits(limits=1):
                proba = model.predict_proba(test[schema.feature_names])
            calibration = fit_calibration(test[schema.target], proba, list(model.classes_))
            write_json(out / CALIBRATION_FILE, calibration.model_dump(mode="json"))
        log.info("evaluated candidate", extra={"candidate": name, primary: results[name][primary]})
    best = best_candidate(results, primary)
    summary = {
        "primary_metric": primary,
        "best": best,
        "holdout_rows": len(test),
        "best_metrics": results[best],
        "candidates": results,
    }
    write_json(workspace.metrics_file, summary)
    return summary
