"""params.yaml is validated with messages that name the offending key."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.params import ParamsError, declared_models, load_params, parse_params
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


def declaration(**models: object) -> dict[str, object]:
    return {**project_params(), "models": models}


def test_without_models_the_project_declares_its_one_model() -> None:
    declared = declared_models(project_params())
    assert list(declared) == ["bitloop-churn"]
    assert declared["bitloop-churn"] == load_params(PROJECT / "params.yaml")


def test_a_declared_model_overrides_only_what_it_names() -> None:
    declared = declared_models(
        declaration(
            diabetes={
                "data": {"source": "sklearn", "name": "diabetes", "target": "target", "task": "regression"},
                "train": {"candidates": {"linear": {"kind": "linear", "alpha": 0.5}}},
            }
        )
    )
    default, diabetes = declared["bitloop-churn"], declared["diabetes"]
    assert list(declared) == ["bitloop-churn", "diabetes"]
    assert diabetes.model.name == "diabetes"
    assert (diabetes.data.source, diabetes.data.task, diabetes.data.rows) == ("sklearn", "regression", 4000)
    assert list(diabetes.train.candidates) == ["linear"]  # its own set, not the defaults' plus one
    assert diabetes.train.seed == default.train.seed == 42  # a key it left out keeps the default
    assert diabetes.split == default.split
    assert diabetes.rollout == default.rollout
    assert diabetes.promote.primary_metric("regression") == "rmse"
    assert default == load_params(PROJECT / "params.yaml")  # the default model is unchanged


@pytest.mark.parametrize(
    ("models", "says"),
    [
        ({"bitloop-churn": {}}, "models.bitloop-churn: 'bitloop-churn' is the default model"),
        ({"other": {"model": {"name": "x"}}}, "models.other: model cannot be set per model"),
        ({"other": {"data": {"task": "ranking"}}}, "models.other is invalid"),
        ({"other": {"split": {"test_fraction": 2}}}, "split.test_fraction"),
        ({"has spaces": {}}, "model.name"),
        ({"other": ["data"]}, "models.other: must map sections"),
    ],
)
def test_a_bad_declaration_names_the_model_and_the_key(models: dict[str, object], says: str) -> None:
    with pytest.raises(ParamsError) as err:
        declared_models(declaration(**models))
    assert says in str(err.value)


def test_models_must_be_a_mapping() -> None:
    with pytest.raises(ParamsError, match="`models` must map each model's name"):
        declared_models({**project_params(), "models": ["a", "b"]})


def test_load_params_reads_the_model_it_is_asked_for(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "params.yaml"
    path.write_text(
        yaml.safe_dump(declaration(wine={"data": {"source": "sklearn", "name": "wine", "target": "target"}}))
    )
    assert load_params(path).model.name == "bitloop-churn"
    assert load_params(path, "wine").data.name == "wine"
    with pytest.raises(ParamsError, match="declares no model 'iris'; it declares bitloop-churn, wine"):
        load_params(path, "iris")


def test_the_readmes_several_models_example_declares_what_it_says() -> None:
    import re

    import yaml

    from tests.factories import PROJECT

    readme = (PROJECT / "README.md").read_text()
    section = readme[readme.index("### Several models") :]
    block = re.search(r"```yaml\n(.*?)```", section, flags=re.DOTALL)
    assert block is not None
    example = yaml.safe_load(block.group(1))
    declared = declared_models({**project_params(), **example})
    assert list(declared) == ["bitloop-churn", "diabetes", "wine"]
    assert (declared["diabetes"].data.task, declared["diabetes"].promote.metric) == ("regression", "mae")
    # Replaced whole: the default's third candidate is gone, and the random forest has only the
    # settings the example gives it (scikit-learn's own defaults for the rest), none of the default's.
    assert list(declared["wine"].train.candidates) == ["linear", "random_forest"]
    forest = declared["wine"].train.candidates["random_forest"].estimator_params
    assert forest == {"n_estimators": 100, "max_depth": 8}
    assert declared["wine"].data.task == "classification"  # the default's, not overridden
    assert (declared["wine"].data.source, declared["wine"].data.path) == ("csv", "wine.csv")
