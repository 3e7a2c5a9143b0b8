"""params.yaml is validated with messages that name the offending key."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.params import ParamsError, load_params, parse_params
from tests.factories import PROJECT, deep_update, project_params


def test_the_project_params_are_valid() -> None:
    params = load_params(PROJECT / "params.yaml")
    assert params.data.source == "simulated"
    assert {c.kind for c in params.train.candidates.values()} == {
        "linear",
        "random_forest",
        "hist_gradient_boosting",
    }


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"data": {"task": "ranking"}}, "data.task"),
        ({"data": {"source": "csv", "path": None}}, "data.path"),
        ({"data": {"source": "sklearn", "name": None}}, "data.name"),
        ({"data": {"drift": 2}}, "data.drift"),
        ({"model": {"name": "has spaces"}}, "model.name"),
        ({"promote": {"metric": "rmse"}}, "promote.metric"),
        ({"promote": {"floors": {"classification": {"r2": 0.1}}}}, "promote.floors.classification.r2"),
        ({"train": {"candidates": {"x": {"kind": "svm"}}}}, "train.candidates.x.kind"),
        ({"split": {"unknown_key": 1}}, "split.unknown_key"),
    ],
)
def test_errors_name_the_key(change: dict[str, object], names: str) -> None:
    with pytest.raises(ParamsError) as err:
        parse_params(deep_update(project_params(), change))
    assert names in str(err.value)


def test_missing_file_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
