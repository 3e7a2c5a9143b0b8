"""Data and workspaces for tests: generated here, never downloaded."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from core.params import Params, declared_models
from pipeline.data.sources.simulated import simulate_churn
from pipeline.workspace import Workspace

PROJECT = Path(__file__).resolve().parents[1]

# Small, fast candidates: the same kinds as params.yaml, a fraction of the work.
LIGHT_CANDIDATES = {
    "linear": {"kind": "linear", "alpha": 1.0},
    "random_forest": {"kind": "random_forest", "n_estimators": 30, "max_depth": 8, "min_samples_leaf": 3},
    "hist_gradient_boosting": {"kind": "hist_gradient_boosting", "max_iter": 60, "max_leaf_nodes": 15},
}


# scikit-learn's bundled diabetes data as a regression source.
DIABETES = {
    "source": "sklearn",
    "name": "diabetes",
    "target": "progression",
    "task": "regression",
    "id_column": None,
}


def project_params() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load((PROJECT / "params.yaml").read_text())
    return raw


def deep_update(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "candidates":
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def light_params(**sections: dict[str, Any]) -> dict[str, Any]:
    """params.yaml with small candidates and batches, and promotion without a canary (the rollout's
    own tests start theirs), plus the given per-section changes."""
    raw = deep_update(
        project_params(),
        {
            "data": {"rows": 1500},
            "train": {"candidates": LIGHT_CANDIDATES},
            "evaluate": {"importance_repeats": 2},
            "rollout": {"share": 0.0},
        },
    )
    return deep_update(raw, sections)


def make_workspace(root: Path, raw: dict[str, Any]) -> tuple[Workspace, Params]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = next(iter(declared_models(raw).values()))  # the default model's
    return Workspace(root, params.model.name), params


def copy_project(dest: Path) -> Path:
    """The files `dvc repro` needs, in a fresh git + DVC repository."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("params.yaml", "dvc.yaml", ".dvcignore"):
        shutil.copy(PROJECT / name, dest / name)
    for package in ("core", "pipeline"):  # the code dvc.yaml's stages list
        shutil.copytree(PROJECT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PROJECT / ".dvc", dest / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    return dest


def git_project(dest: Path, raw: dict[str, Any]) -> Workspace:
    """A committed git + DVC project with these params, as a user's clone is: work tree clean."""
    copy_project(dest)
    shutil.copy(PROJECT / ".gitignore", dest / ".gitignore")
    workspace, _ = make_workspace(dest, raw)
    git = ["git", "-C", str(dest), "-c", "user.name=bitloop", "-c", "user.email=bitloop@localhost"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "project"], check=True)
    return workspace


def messy_churn_csv(path: Path, n: int = 1200, seed: int = 7) -> Path:
    """A CSV as real exports look: blank numbers, 'Yes'/'No' labels, an id, odd spacing, NA spellings."""
    frame = simulate_churn(n, seed).rename(columns={"customer_id": "CustomerID", "churned": "Churn"})
    rng = np.random.default_rng(seed)
    out = frame.astype(object)
    out["Churn"] = np.where(frame["Churn"] == 1, "Yes", "No")
    out["total_charges"] = [" " if pd.isna(v) else f"{v:.2f}" for v in frame["total_charges"]]
    blanks = rng.random(n) < 0.03
    out.loc[blanks, "age"] = rng.choice(["", "NA", "n/a"], size=int(blanks.sum()))
    out["contract"] = [f" {v} " for v in frame["contract"]]
    out.to_csv(path, index=False)
    return path


def log_predictions(
    path: Path | str, model_name: str, frame: pd.DataFrame, ts: float, variant: str = "champion"
) -> None:
    """Append a frame of feature rows to a prediction log, as the model server writes them."""
    from core.predictions.access import insert_rows
    from core.predictions.rows import Row

    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    rows = [
        Row(ts, f"r{i}", model_name, "1", variant, {str(k): v for k, v in r.items()}, 0, None)
        for i, r in enumerate(records)
    ]
    insert_rows(path, rows)
