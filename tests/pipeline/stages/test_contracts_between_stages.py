"""The files and tables one process writes and another reads go through typed models: what is
written reads back equal, and a file missing a field fails where it is read, naming the field."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.predictions.access import insert_rows, read_rows
from core.predictions.rows import Row
from core.profile import ReferenceProfile, build_profile
from pipeline.stages.reports import CandidateSeen, ChampionSeen, PromotionReport, Registration
from pipeline.workspace import read_json, write_json
from tests.core.test_drift import SCHEMA, population


def test_prediction_rows_read_back_as_written(tmp_path: Path) -> None:
    rows = [
        Row(1.5, "a", "m", "1", "champion", {"x": 1.0, "colour": None}, 1, {"0": 0.25, "1": 0.75}),
        Row(2.5, "b", "m", "2", "shadow", {"x": -3.0, "colour": "red"}, "yes", None),
        Row(3.5, "c", "m", "1", "challenger", {}, 12.75, None),
    ]
    insert_rows(tmp_path / "log.sqlite", rows[:2])
    insert_rows(tmp_path / "log.sqlite", rows[2:])
    assert read_rows(tmp_path / "log.sqlite") == rows


def test_the_reference_profile_file_reads_back_equal(tmp_path: Path) -> None:
    import numpy as np

    profile = build_profile(population(300, np.random.default_rng(1)), SCHEMA, seed=1)
    write_json(tmp_path / "profile.json", profile.to_json())
    assert ReferenceProfile.model_validate(read_json(tmp_path / "profile.json")) == profile
    # Only the fields a kind of feature has are written.
    written = read_json(tmp_path / "profile.json")["features"]
    assert "frequencies" not in written["x"]
    assert "sample" not in written["colour"]


def test_a_promotion_report_keeps_nan_scores_and_only_the_fields_set(tmp_path: Path) -> None:
    report = PromotionReport(model_name="m", data_version="v3", metric="roc_auc", margin=0.002, floors={})
    report.candidate = CandidateSeen(name="linear", version="4", metrics={"roc_auc": math.nan})
    report.champion = ChampionSeen(version="3")
    written = report.write(tmp_path / "promotion.json")
    assert set(written) == {
        "model_name",
        "data_version",
        "metric",
        "margin",
        "floors",
        "candidate",
        "champion",
    }
    assert written["champion"] == {"version": "3"}
    again = PromotionReport.read(tmp_path / "promotion.json")
    assert again.candidate is not None
    assert math.isnan(again.candidate.metrics["roc_auc"])


def test_a_report_missing_a_field_fails_naming_it(tmp_path: Path) -> None:
    write_json(tmp_path / "registered.json", {"model_name": "m", "primary_metric": "rmse", "best": None})
    with pytest.raises(ValidationError, match="data_version"):
        Registration.read(tmp_path / "registered.json")
    write_json(
        tmp_path / "promotion.json",
        {"model_name": "m", "data_version": "v1", "metric": "f1", "margin": 0, "floors": {}, "promotd": True},
    )
    with pytest.raises(ValidationError, match="promotd"):
        PromotionReport.read(tmp_path / "promotion.json")
