"""Fit every candidate from params.yaml on the training split and save it."""

from __future__ import annotations

import logging
import pickle
import time
from pathlib import Path

import pandas as pd
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from pipeline.models import build_pipeline
from pipeline.params import Params
from pipeline.profile import build_profile
from pipeline.schema import DatasetSchema
from pipeline.workspace import Workspace, read_json, write_json

log = logging.getLogger(__name__)


def load_schema(workspace: Workspace) -> DatasetSchema:
    return DatasetSchema.model_validate(read_json(workspace.schema_file))


def load_candidate(path: Path) -> Pipeline:
    """A fitted candidate written by `train` (a pickle this project wrote itself)."""
    with path.open("rb") as handle:
        model: Pipeline = pickle.load(handle)  # noqa: S301 - our own artefact, never user input
    return model


def train(params: Params, workspace: Workspace) -> dict[str, Path]:
    """Fit each candidate single-threaded (for byte-identical results) and pickle it."""
    schema = load_schema(workspace)
    frame = pd.read_parquet(workspace.train_file)
    features, target = frame[schema.feature_names], frame[schema.target]
    workspace.candidates_dir.mkdir(parents=True, exist_ok=True)
    for stale in workspace.candidates_dir.glob("*.pkl"):
        stale.unlink()
    written: dict[str, Path] = {}
    total = len(params.train.candidates)
    for index, (name, candidate) in enumerate(params.train.candidates.items(), start=1):
        started = time.perf_counter()
        model = build_pipeline(candidate, schema, params.train.seed, params.train.max_categories)
        with threadpool_limits(limits=1):
            model.fit(features, target)
        path = workspace.candidate_file(name)
        path.write_bytes(pickle.dumps(model, protocol=5))
        written[name] = path
        log.info(
            "trained candidate %d/%d",
            index,
            total,
            extra={"candidate": name, "seconds": round(time.perf_counter() - started, 2)},
        )
    write_json(workspace.profile_file, build_profile(features, schema, params.train.seed, target))
    return written
