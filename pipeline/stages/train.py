"""Fit every candidate from params.yaml on the training split and save it."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd
from threadpoolctl import threadpool_limits

from core.params import Params
from core.profile import build_profile
from core.schema import DatasetSchema
from pipeline.stages.candidates import save_candidate
from pipeline.stages.models import build_pipeline
from pipeline.workspace import Workspace, write_json

log = logging.getLogger(__name__)


def train(params: Params, workspace: Workspace) -> dict[str, Path]:
    """Fit each candidate single-threaded (for byte-identical results) and pickle it."""
    schema = DatasetSchema.read(workspace.schema_file)
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
        save_candidate(model, path)
        written[name] = path
        log.info(
            "trained candidate %d/%d",
            index,
            total,
            extra={"candidate": name, "seconds": round(time.perf_counter() - started, 2)},
        )
    write_json(workspace.profile_file, build_profile(features, schema, params.train.seed, target).to_json())
    return written
