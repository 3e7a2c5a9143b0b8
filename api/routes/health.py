"""Liveness, readiness, the served models' descriptions and Prometheus metrics.

The routes about one model answer for the default model at the root (`/model`, `/ready`, `/drift`,
`/performance`) and for any served model under `/models/{name}` (`model_router`); `GET /models`
lists them all."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status

from api import metrics
from api.dataplane import Unavailable
from api.predlog import LogStatus
from api.schemas import (
    FeatureOut,
    Health,
    LastRolloutOut,
    ModelInfo,
    ModelsOut,
    PredictionLogOut,
    Readiness,
    RefusalOut,
    RolloutOut,
    ServedModelOut,
    error_responses,
)
from api.state import ServerState, StateDep, require_api_key
from core.drift import DriftReport
from core.quality import QualityReport

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health, summary="Liveness: the process answers")
async def health() -> Health:
    return Health()


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness}},
    summary="Readiness: a champion is loaded and can predict",
)
async def ready(state: StateDep, response: Response) -> Readiness:
    model = state.manager.champion
    ready, problems = state.scoring.readiness()
    if state.drain.draining:
        ready = False
        problems.insert(0, "draining: this replica is shutting down")
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    log = state.log.status()
    return Readiness(
        ready=ready,
        model_name=state.manager.name,
        model_version=None if model is None else model.version,
        detail="; ".join(problems) if not ready else "; ".join(["serving", *problems]),
        prediction_log=log_out(log),
    )


def log_out(log: LogStatus) -> PredictionLogOut:
    if log.error is not None:
        status, detail = "degraded", f"writes fail, {log.pending_rows} rows wait: {log.error[:200]}"
    elif log.catching_up:
        status, detail = "catching_up", f"degraded, catching up: {log.pending_rows} rows still to write"
    else:
        status, detail = "ok", "writing"
    return PredictionLogOut(
        status=status,
        detail=detail,
        pending_rows=log.pending_rows,
        spilled_rows=log.spilled_rows,
        dropped_rows=log.dropped_rows,
        quarantined_rows=log.quarantined_rows,
    )


@router.get(
    "/model",
    response_model=ModelInfo,
    responses=error_responses(503),
    summary="The served champion: version, run, metrics, data version, features",
)
async def model_info(state: StateDep) -> ModelInfo:
    model = state.scoring.champion()
    challenger = state.manager.challenger
    return ModelInfo(
        name=model.name,
        version=model.version,
        run_id=model.run_id,
        task=model.schema.task,
        target=model.schema.target,
        classes=model.classes,
        metrics=model.metrics,
        data_version=model.data_version,
        loaded_at=model.loaded_at.isoformat(),
        features=[
            FeatureOut(
                name=f.name,
                kind=f.kind,
                categories=list(f.categories),
                nullable=f.nullable,
                typical=model.typical(f.name),
            )
            for f in model.schema.features
        ],
        challenger_version=None if challenger is None else challenger.version,
        runtime=model.runtime,
        runtime_detail=model.runtime_detail,
        challenger_runtime=None if challenger is None else challenger.runtime,
        traffic_check=model.traffic_check,
        refused=[
            RefusalOut(variant=variant, version=r.version, reason=r.reason)
            for variant, r in state.manager.refusals.items()
        ],
        rollout=_rollout(state),
        last_rollout=None
        if (last := state.manager.last_rollout) is None
        else LastRolloutOut.model_validate(last),
    )


def _rollout(state: ServerState) -> RolloutOut | None:
    canary, rollout = state.manager.canary, state.manager.rollout
    if canary is None or rollout is None or rollout.version != canary.version:
        return None
    terms = rollout.terms()
    return RolloutOut(
        stable_version=rollout.stable,
        stable_share=1.0 - rollout.share,
        canary_version=canary.version,
        canary_share=rollout.share,
        started_at=terms["started_at"],
        min_requests=rollout.min_requests,
        deadline=terms["deadline"],
    )


@router.get(
    "/drift",
    dependencies=[Depends(require_api_key)],
    response_model=DriftReport,
    responses=error_responses(401, 409, 503),
    summary="Drift of recent live inputs from the champion's reference profile",
    description=(
        "The latest sliding-window drift report (per-feature test, score, threshold, PSI, and the "
        "dataset verdict). `fresh=true` evaluates the window now instead of returning the report of "
        "the last periodic evaluation; concurrent callers share one evaluation. Needs the API key "
        "when the server has one."
    ),
)
async def drift(state: StateDep, fresh: bool = False) -> DriftReport:
    champion = state.scoring.champion()
    if champion.profile is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"{champion.name} version {champion.version} was logged without a reference profile",
        )
    report = state.drift.last
    if fresh or report is None or report.model.get("version") != champion.version:
        report = await state.drift.evaluate_shared()
    if report is None:  # the champion was swapped out during the evaluation
        raise Unavailable("the served model changed during the drift evaluation; ask again")
    return report


@router.get(
    "/performance",
    dependencies=[Depends(require_api_key)],
    response_model=QualityReport,
    responses=error_responses(401, 503),
    summary="Live quality of the served versions from the true outcomes sent to /feedback",
    description=(
        "Per model version and variant, over the quality window of the prediction log: the realized "
        "metrics of the predictions whose true outcome arrived (from quality.min_labelled of them), "
        "the share labelled and the median label lag, for classifiers the accuracy and ROC AUC "
        "expected from the probabilities before labels arrive (CBPE), the version's holdout figures "
        "and the limits its live figures breach. `fresh=true` evaluates now instead of returning the "
        "last periodic evaluation. Needs the API key when the server has one."
    ),
)
async def performance(state: StateDep, fresh: bool = False) -> QualityReport:
    state.scoring.champion()  # 503 while no champion is served
    report = state.quality.last
    if fresh or report is None:
        report = await state.quality.evaluate_shared()
    if report is None:  # the champion was swapped out during the evaluation
        raise Unavailable("the served model changed during the quality evaluation; ask again")
    return report


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
async def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


@router.get("/models", response_model=ModelsOut, summary="Every served model: its version, runtime and state")
async def served_models(request: Request) -> ModelsOut:
    """Read without loading anything: an unloaded model stays unloaded."""
    residency = request.app.state.residency
    models: dict[str, ServerState] = request.app.state.models
    now = time.monotonic()
    listed = []
    for index, (name, state) in enumerate(models.items()):
        manager = state.manager
        champion, canary, challenger = manager.champion, manager.canary, manager.challenger
        if not manager.resident:
            found = "unloaded"
        elif champion is not None:
            found = "serving"
        else:
            found = "refused" if "champion" in manager.refusals else "no_champion"
        listed.append(
            ServedModelOut(
                name=name,
                default=index == 0,
                state=found,
                version=None if champion is None else champion.version,
                runtime=None if champion is None else champion.runtime,
                task=None if champion is None else champion.schema.task,
                canary_version=None if canary is None else canary.version,
                challenger_version=None if challenger is None else challenger.version,
                last_used_seconds_ago=round(max(0.0, now - manager.last_used), 3),
                cold_loads=residency.cold_loads[name],
                unloads=residency.unloads[name],
            )
        )
    return ModelsOut(
        max_loaded_models=residency.limit,
        loaded=sum(state.manager.resident for state in models.values()),
        models=listed,
    )


model_router = APIRouter(tags=["models"])
"""The routes about one model, under /models/{name}: the same answers as the default model's."""
model_router.add_api_route(
    "",
    model_info,
    methods=["GET"],
    response_model=ModelInfo,
    responses=error_responses(404, 503),
    summary="One served model's champion, as /model describes the default one",
)
model_router.add_api_route(
    "/ready",
    ready,
    methods=["GET"],
    response_model=Readiness,
    responses={503: {"model": Readiness}, **error_responses(404)},
    summary="One served model's readiness, as /ready gives the default one's",
)
model_router.add_api_route(
    "/drift",
    drift,
    methods=["GET"],
    dependencies=[Depends(require_api_key)],
    response_model=DriftReport,
    responses=error_responses(401, 404, 409, 503),
    summary="Drift of one served model's recent live inputs, as /drift for the default one",
)
model_router.add_api_route(
    "/performance",
    performance,
    methods=["GET"],
    dependencies=[Depends(require_api_key)],
    response_model=QualityReport,
    responses=error_responses(401, 404, 503),
    summary="Live quality of one served model's versions, as /performance for the default one",
)
