"""Only skops files of numpy, scikit-learn and SciPy types load; the model's own trust list is never used."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from core.serialization import UntrustedModel, load_sklearn_model, trusted_types

X = np.random.default_rng(0).normal(size=(60, 3))
Y = (X[:, 0] > 0).astype(int)


def doubled(values: np.ndarray) -> np.ndarray:
    return values * 2


def plain() -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression()).fit(X, Y)


def saved(tmp_path: Path, model: Pipeline, fmt: str = "skops", trusted: list[str] | None = None) -> Path:
    path = tmp_path / "model"
    mlflow.sklearn.save_model(model, str(path), serialization_format=fmt, skops_trusted_types=trusted)
    return path


def test_a_skops_model_of_trusted_types_loads_and_predicts_the_same(tmp_path: Path) -> None:
    model = plain()
    loaded = load_sklearn_model(saved(tmp_path, model, trusted=trusted_types(model)))
    assert np.array_equal(loaded.predict_proba(X), model.predict_proba(X))


@pytest.mark.parametrize("fmt", ["cloudpickle", "pickle"])
def test_pickled_models_are_refused_before_any_byte_is_unpickled(tmp_path: Path, fmt: str) -> None:
    path = saved(tmp_path, plain(), fmt=fmt)
    (path / "model.pkl").write_bytes(b"not a pickle: reading it would fail loudly")
    with pytest.raises(UntrustedModel, match=f"stored as '{fmt}': only the skops format"):
        load_sklearn_model(path)


def test_a_foreign_type_is_refused_even_when_the_model_itself_trusts_it(tmp_path: Path) -> None:
    model = make_pipeline(FunctionTransformer(doubled), LogisticRegression()).fit(X, Y)
    with pytest.raises(UntrustedModel, match="outside numpy/scikit-learn/SciPy"):
        trusted_types(model)
    import skops.io

    everything = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    path = saved(tmp_path, model, trusted=everything)  # the MLmodel file lists the function as trusted
    assert "doubled" in (path / "MLmodel").read_text()
    with pytest.raises(UntrustedModel, match="doubled"):
        load_sklearn_model(path)


def test_a_model_file_outside_the_model_directory_is_refused(tmp_path: Path) -> None:
    model = plain()
    path = saved(tmp_path, model, trusted=trusted_types(model))
    mlmodel = yaml.safe_load((path / "MLmodel").read_text())
    (tmp_path / "elsewhere.skops").write_bytes((path / "model.skops").read_bytes())
    mlmodel["flavors"]["sklearn"]["pickled_model"] = "../elsewhere.skops"
    (path / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(UntrustedModel, match="outside the model directory"):
        load_sklearn_model(path)


def test_a_directory_without_a_scikit_learn_flavor_is_refused(tmp_path: Path) -> None:
    (tmp_path / "MLmodel").write_text("flavors: {python_function: {}}\n")
    with pytest.raises(UntrustedModel, match="does not describe a scikit-learn model"):
        load_sklearn_model(tmp_path)
