"""Run one stage, or all of them in order, by name (what the CLI, `dvc repro` and DAGs call)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from core.params import Params
from core.settings import PipelineSettings
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)


def _ingest(
    params: Params,
    workspace: Workspace,
    settings: PipelineSettings,
    seed: int | None = None,
    drift: float | None = None,
    source_url: str | None = None,
) -> Any:
    from pipeline.stages.ingest import ingest

    return ingest(params, workspace, seed=seed, drift=drift, source_url=source_url).version.as_dict()


def _validate(params: Params, workspace: Workspace, settings: PipelineSettings) -> Any:
    from pipeline.stages.validate import validate

    return validate(params, workspace).render()


def _split(params: Params, workspace: Workspace, settings: PipelineSettings) -> Any:
    from pipeline.stages.split import split

    return dict(zip(("train_rows", "test_rows"), split(params.split, workspace), strict=True))


def _train(params: Params, workspace: Workspace, settings: PipelineSettings) -> Any:
    from pipeline.stages.train import train

    return sorted(train(params, workspace))


def _evaluate(params: Params, workspace: Workspace, settings: PipelineSettings) -> Any:
    from pipeline.stages.evaluate import evaluate

    return evaluate(params, workspace)


def _register(params: Params, workspace: Workspace, settings: PipelineSettings) -> Any:
    from pipeline.stages.register import register

    return register(params, workspace, settings)


def _promote(
    params: Params, workspace: Workspace, settings: PipelineSettings, allow_schema_change: bool = False
) -> Any:
    from pipeline.stages.promote import promote

    return promote(params, workspace, settings, allow_schema_change=allow_schema_change)


# Each stage's function, in order: the one list of the stages. dvc.yaml and the training DAG spell
# it in their own terms and tests hold them to it (tests/pipeline/test_stage_declarations.py,
# tests/dags/test_training_dag.py). Heavy libraries are imported per stage so `ingest` never pays
# for MLflow. Keyword options go only to the stage that takes them.
STAGE_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "ingest": _ingest,
    "validate": _validate,
    "split": _split,
    "train": _train,
    "evaluate": _evaluate,
    "register": _register,
    "promote": _promote,
}
STAGES = tuple(STAGE_FUNCTIONS)


def run_stage(
    name: str, params: Params, workspace: Workspace, settings: PipelineSettings, **options: Any
) -> Any:
    """Run one stage with the options it takes (`seed`, `drift`, `source_url` for ingest;
    `allow_schema_change` for promote)."""
    if name not in STAGE_FUNCTIONS:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    return STAGE_FUNCTIONS[name](params, workspace, settings, **options)


def run_all(
    params: Params,
    workspace: Workspace,
    settings: PipelineSettings,
    *,
    seed: int | None = None,
    drift: float | None = None,
) -> dict[str, Any]:
    """Every stage in order; returns the promotion report."""
    result: dict[str, Any] = {}
    for index, name in enumerate(STAGES, start=1):
        log.info("stage %d/%d: %s", index, len(STAGES), name)
        options = {"seed": seed, "drift": drift} if name == "ingest" else {}
        result = run_stage(name, params, workspace, settings, **options)
    return result
