"""Retraining converges: after the world shifts, each retrain ingests one batch of the new world,
and with a training window of N batches the drift monitor is quiet after N retrains; without a
window the old world's batches outvote the new one and the monitor keeps asking for more."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from core.drift import detect
from core.params import Params
from core.profile import build_profile
from core.schema import DatasetSchema
from pipeline.data.sources.simulated import simulate_churn
from pipeline.stages.ingest import ingest
from pipeline.stages.split import split
from pipeline.stages.validate import validate
from pipeline.workspace import Workspace, read_json
from tests.factories import light_params, make_workspace

OLD_BATCHES = 2


def reference_after_retrain(params: Params, workspace: Workspace, seed: int) -> bool:
    """One drift-triggered retrain's data path (ingest a shifted batch, validate, split, the
    training split's profile): whether live traffic of the shifted world still drifts from it."""
    ingest(params, workspace, seed=seed, drift=1.0)
    validate(params, workspace)
    split(params.split, workspace)
    schema = DatasetSchema.model_validate(read_json(workspace.schema_file))
    train = pd.read_parquet(workspace.train_file)
    profile = build_profile(train[schema.feature_names], schema, params.train.seed)
    live = simulate_churn(3000, 99, 1.0)[schema.feature_names]
    return detect(profile, live, params.drift).dataset_drift


@pytest.mark.parametrize(("window", "retrains_until_quiet"), [(1, 1), (2, 2)])
def test_a_window_of_n_batches_learns_the_shift_in_n_retrains(
    tmp_path: Path, window: int, retrains_until_quiet: int
) -> None:
    workspace, params = make_workspace(tmp_path, light_params(retrain={"window_batches": window}))
    for seed in range(1, OLD_BATCHES + 1):
        ingest(params, workspace, seed=seed, drift=0.0)
    drifted = [reference_after_retrain(params, workspace, 100 + n) for n in range(3)]
    assert drifted == [True] * (retrains_until_quiet - 1) + [False] * (3 - retrains_until_quiet + 1)


def test_without_a_window_the_old_world_keeps_the_monitor_asking(tmp_path: Path) -> None:
    workspace, params = make_workspace(tmp_path, light_params(retrain={"window_batches": None}))
    for seed in range(1, OLD_BATCHES + 1):
        ingest(params, workspace, seed=seed, drift=0.0)
    assert [reference_after_retrain(params, workspace, 100 + n) for n in range(2)] == [True, True]
