"""The model server reads the params of the model it serves."""

from __future__ import annotations

from pathlib import Path

from api.settings import ApiSettings
from tests.factories import light_params, make_workspace


def test_a_declared_model_is_monitored_with_its_own_sections(tmp_path: Path) -> None:
    own = {"drift": {"min_samples": 50}, "quality": {"max_drop": 0.2}, "promote": {"metric": "accuracy"}}
    make_workspace(tmp_path, light_params(model={"name": "main-model"}, models={"other": own}))
    params_file = tmp_path / "params.yaml"

    drift, quality, promote = ApiSettings(params_file=params_file, model_name="other").monitoring_config()
    assert (drift.min_samples, quality.max_drop, promote.metric) == (50, 0.2, "accuracy")
    for name in ("main-model", None, "not-declared"):  # the default model's, as a one-model project's
        drift, quality, promote = ApiSettings(params_file=params_file, model_name=name).monitoring_config()
        assert (drift.min_samples, quality.max_drop, promote.metric) == (200, 0.05, "auto")
