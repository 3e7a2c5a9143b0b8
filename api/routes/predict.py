"""Predictions: one record (micro-batched with concurrent requests) or a batch of records."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel

from api.model import ServedModel
from api.schemas import BatchPredictionOut, ErrorOut, PredictionOut
from api.state import ServerState, StateDep, require_api_key
from api.validation import parse, read_json

log = logging.getLogger(__name__)
router = APIRouter(tags=["predict"], dependencies=[Depends(require_api_key)])
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "an API key is required and was missing or wrong"},
    422: {"description": "invalid input: `detail` names each offending field (`loc`)"},
    503: {"model": ErrorOut, "description": "no model has been promoted yet"},
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


def _shadow(state: ServerState, request_id: str, records: list[dict[str, Any]]) -> None:
    """Score @challenger on the same records without touching the response."""
    challenger = state.manager.challenger
    if not state.settings.shadow or challenger is None:
        return

    async def score() -> None:
        try:
            labels, probabilities = await state.batcher.run_in_thread(challenger.predict, records)
            state.record(challenger, "shadow", request_id, records, labels, probabilities)
        except Exception:
            log.exception("shadow scoring failed", extra={"version": challenger.version})

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
    payload = await read_json(request, state.settings.max_body_bytes)
    record = parse(model.record_model, payload).model_dump(by_alias=True)
    label, probabilities = await state.batcher.submit(model, variant, record)
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
    payload = await read_json(request, state.settings.max_body_bytes)
    batch = parse(model.batch_model, payload)
    records: list[dict[str, Any]] = batch.model_dump(by_alias=True)["records"]
    labels, probabilities = await state.batcher.run_in_thread(model.predict, records)
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
