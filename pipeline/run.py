"""Run one stage, or all of them in order, by name (what the CLI, `dvc repro` and DAGs call)."""

from __future__ import annotations

import logging
from typing import Any

from pipeline.params import Params
from pipeline.settings import PipelineSettings
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)
STAGES = ("ingest", "validate", "split", "train", "evaluate", "register", "promote")


def run_stage(
    name: str, params: Params, workspace: Workspace, settings: PipelineSettings, **options: Any
) -> Any:
    """Run one stage; heavy libraries are imported per stage so `ingest` never pays for MLflow."""
    if name == "ingest":
        from pipeline.ingest import ingest

        return ingest(
            params,
            workspace,
            seed=options.get("seed"),
            drift=options.get("drift"),
            source_url=options.get("source_url"),
        ).version.as_dict()
    if name == "validate":
        from pipeline.validate import validate

        return validate(params, workspace).render()
    if name == "split":
        from pipeline.split import split

        return dict(zip(("train_rows", "test_rows"), split(params.split, workspace), strict=True))
    if name == "train":
        from pipeline.train import train

        return sorted(train(params, workspace))
    if name == "evaluate":
        from pipeline.evaluate import evaluate

        return evaluate(params, workspace)
    if name == "register":
        from pipeline.register import register

        return register(params, workspace, settings)
    if name == "promote":
        from pipeline.promote import promote

        return promote(
            params, workspace, settings, allow_schema_change=options.get("allow_schema_change", False)
        )
    raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")


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
        result = run_stage(name, params, workspace, settings, seed=seed, drift=drift)
    return result
