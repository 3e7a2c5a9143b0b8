"""Predictions: one record (micro-batched with concurrent requests) or a batch of records."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from api import metrics
from api.model import ServedModel, UnscorableRecord, split_outcomes
from api.schemas import BatchPredictionOut, ErrorOut, PredictionOut
from api.state import ServerState, StateDep, require_api_key
from api.validation import JSON, parse, read_body

log = logging.getLogger(__name__)
router = APIRouter(tags=["predict"], dependencies=[Depends(require_api_key)])
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "an API key is required and was missing or wrong"},
    408: {"model": ErrorOut, "description": "the request body did not arrive in time"},
    415: {"model": ErrorOut, "description": f"the body is not declared as `{JSON}`"},
    422: {
        "description": "invalid input: `detail` names each offending field (`loc`), including values "
        "the schema accepts but the model cannot score"
    },
    503: {"model": ErrorOut, "description": "no model has been promoted yet, or the prediction log refuses"},
}


def _json(out: BaseModel) -> Response:
    """Serialise with pydantic directly: FastAPI's generic encoder costs milliseconds per large batch."""
    return Response(out.model_dump_json(), media_type="application/json")


def _body(ref: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
        }
    }


def _failure(model: ServedModel, variant: str, failures: dict[tuple[Any, ...], Exception]) -> Exception:
    """What to raise for records the model failed on: a 422 naming each record's field when the input
    is at fault, else the model's own error (a 500, logged)."""
    fault = None
    for err in failures.values():
        cause = "input" if isinstance(err, UnscorableRecord) else "model"
        metrics.PREDICTION_FAILURES.labels(model.name, model.version, variant, cause).inc()
        fault = fault or (None if isinstance(err, UnscorableRecord) else err)
    if fault is not None:
        return fault
    return RequestValidationError(
        [
            {
                "type": "unscorable",
                "loc": (
                    "body",
                    *where,
                    *((err.field,) if isinstance(err, UnscorableRecord) and err.field else ()),
                ),
                "msg": str(err),
            }
            for where, err in failures.items()
        ]
    )


def _shadow(state: ServerState, request_id: str, records: list[dict[str, Any]]) -> None:
    """Score @challenger on the same records without touching the response."""
    challenger = state.manager.challenger
    if not state.settings.shadow or challenger is None:
        return

    async def score() -> None:
        try:
            outcomes = await state.batcher.run_in_thread(challenger.score, records)
        except Exception:
            log.exception("shadow scoring failed", extra={"version": challenger.version})
            return
        scored = [(r, o) for r, o in zip(records, outcomes, strict=True) if not isinstance(o, Exception)]
        if len(scored) < len(records):
            log.warning("shadow scoring failed on some records", extra={"version": challenger.version})
        if scored:
            labels, probabilities = split_outcomes([o for _, o in scored], challenger.schema.task)
            state.record(challenger, "shadow", request_id, [r for r, _ in scored], labels, probabilities)

    task = asyncio.get_running_loop().create_task(score())
    state.background.add(task)
    task.add_done_callback(state.background.discard)


def _account(
    state: ServerState,
    model: ServedModel,
    variant: str,
    records: list[dict[str, Any]],
    labels: list[Any],
    probabilities: list[dict[str, float]] | None,
) -> str:
    """Give the answer a request id, log and count it, and shadow-score it; returns the id."""
    request_id = uuid.uuid4().hex
    state.record(model, variant, request_id, records, labels, probabilities)
    _shadow(state, request_id, records)
    return request_id


@router.post(
    "/predict",
    response_model=PredictionOut,
    responses=ERRORS,
    openapi_extra=_body("Record"),
    summary="Predict one record",
)
async def predict(request: Request, state: StateDep) -> Response:
    model, variant = state.require_model()
    body = await read_body(request, state.settings.max_body_bytes, state.settings.body_timeout_seconds)
    record = parse(model.record_model, body).model_dump(by_alias=True)
    try:
        label, probabilities = await state.batcher.submit(model, variant, record)
    except Exception as err:
        raise _failure(model, variant, {(): err}) from None
    request_id = _account(
        state, model, variant, [record], [label], None if probabilities is None else [probabilities]
    )
    return _json(
        PredictionOut(
            prediction=label,
            probabilities=probabilities,
            model_name=model.name,
            model_version=model.version,
            variant=variant,
            request_id=request_id,
        )
    )


@router.post(
    "/predict/batch",
    response_model=BatchPredictionOut,
    responses=ERRORS,
    openapi_extra=_body("BatchRequest"),
    summary="Predict a batch of records",
)
async def predict_batch(request: Request, state: StateDep) -> Response:
    model, variant = state.require_model()
    body = await read_body(request, state.settings.max_body_bytes, state.settings.body_timeout_seconds)
    records: list[dict[str, Any]] = parse(model.batch_model, body).model_dump(by_alias=True)["records"]
    outcomes = await state.batcher.run_in_thread(model.score, records)
    failures = {("records", i): o for i, o in enumerate(outcomes) if isinstance(o, Exception)}
    if failures:
        raise _failure(model, variant, failures)
    labels, probabilities = split_outcomes(outcomes, model.schema.task)
    request_id = _account(state, model, variant, records, labels, probabilities)
    return _json(
        BatchPredictionOut(
            predictions=labels,
            probabilities=probabilities,
            model_name=model.name,
            model_version=model.version,
            variant=variant,
            request_id=request_id,
        )
    )
