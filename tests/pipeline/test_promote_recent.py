"""Promotion judges on the world as it is now: after a concept change, candidate and champion are
compared on the newest batch's holdout rows, not on a holdout the old world still fills half of."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.ingest import ingest
from pipeline.params import parse_params
from pipeline.promote import recent_holdout
from pipeline.run import run_stage
from pipeline.schema import BATCH_COLUMN
from pipeline.settings import PipelineSettings
from pipeline.workspace import read_json
from tests.factories import light_params, make_workspace

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

AFTER_INGEST = ("validate", "split", "train", "evaluate", "register")


@given(st.lists(st.integers(1, 400), min_size=1, max_size=8), st.integers(1, 2000) | st.none())
def test_the_rows_compared_are_whole_batches_newest_first_until_enough(
    sizes: list[int], wanted: int | None
) -> None:
    test = pd.DataFrame({BATCH_COLUMN: [b for b, n in enumerate(sizes) for _ in range(n)], "x": 0.0})
    recent, described = recent_holdout(test, wanted)
    taken = sorted(set(recent[BATCH_COLUMN]))
    assert taken == list(range(len(sizes)))[len(sizes) - len(taken) :]  # a run of the newest batches
    assert len(recent) == sum(sizes[b] for b in taken)  # whole batches
    if wanted is None or len(recent) == len(test):
        assert described == f"the whole holdout ({len(test)} rows)"
    else:
        assert len(recent) >= wanted  # enough rows...
        assert len(recent) - sizes[taken[0]] < wanted  # ...and no batch more than needed
        assert f"({len(recent)} of {len(test)} rows)" in described


def test_a_candidate_of_the_new_concept_wins_on_the_newest_batch_where_the_mixed_holdout_keeps_the_old(
    tmp_path: Path, mlflow_uri: str
) -> None:
    """On this seeded history the new-concept candidate gains 0.033 ROC AUC over the champion on the
    whole (half old-world) holdout and 0.089 on the newest batch's rows: a margin of 0.05 between
    the two tells the comparisons apart. Judged on the whole holdout (`recent_rows: null`, what
    promotion did before) the old champion stays; on the newest rows the candidate wins."""
    settings = PipelineSettings(mlflow_tracking_uri=mlflow_uri)
    raw = light_params(model={"name": "turning-churn"}, promote={"margin": 0.05, "recent_rows": 300})
    workspace, params = make_workspace(tmp_path, raw)
    for seed in (21, 22):  # the champion: two batches of the drifted world, its concept following
        ingest(params, workspace, seed=seed, drift=1.0)
        for stage in (*AFTER_INGEST, "promote"):
            run_stage(stage, params, workspace, settings)
    ingest(params, workspace, seed=23, drift=1.0, concept=0.0)  # the relation turns, inputs stay
    for stage in AFTER_INGEST:
        run_stage(stage, params, workspace, settings)
    whole = run_stage(
        "promote",
        parse_params({**raw, "promote": {**raw["promote"], "recent_rows": None}}),
        workspace,
        settings,
    )
    newest = run_stage("promote", params, workspace, settings)
    assert not whole["promoted"]
    assert newest["promoted"], newest["reason"]
    assert newest["compared_rows"].startswith("the holdout rows of the newest batch (")
    assert read_json(workspace.promotion_file)["compared_rows"] == newest["compared_rows"]
