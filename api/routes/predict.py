"""Predictions: one record (micro-batched with concurrent requests) or a batch of records.

The routes parse and answer; `api.scoring` picks the model, predicts, records and shadows.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel

from api.schemas import BatchPredictionOut, PredictionOut, error_responses
from api.state import StateDep, require_api_key
from api.validation import parse, parse_batch, read_body

router = APIRouter(tags=["predict"], dependencies=[Depends(require_api_key)])
ERRORS = error_responses(401, 408, 415, 422, 503)


def json_response(out: BaseModel) -> Response:
    """Serialise with pydantic directly: FastAPI's generic encoder costs milliseconds per large batch."""
    return Response(out.model_dump_json(), media_type="application/json")


def _body(ref: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
        }
    }


@router.post(
    "/predict",
    response_model=PredictionOut,
    responses=ERRORS,
    openapi_extra=_body("Record"),
    summary="Predict one record",
)
async def predict(request: Request, state: StateDep) -> Response:
    model, variant = state.scoring.pick()
    body = await read_body(request, state.settings.max_body_bytes, state.settings.body_timeout_seconds)
    record = parse(model.record_model, body).model_dump(by_alias=True)
    answer = await state.scoring.predict(model, variant, record)
    return json_response(
        PredictionOut(
            prediction=answer.labels[0],
            probabilities=None if answer.probabilities is None else answer.probabilities[0],
            model_name=model.name,
            model_version=model.version,
            variant=variant,
            request_id=answer.request_id,
        )
    )


@router.post(
    "/predict/batch",
    response_model=BatchPredictionOut,
    responses=ERRORS,
    openapi_extra=_body("BatchRequest"),
    summary='Predict a batch: `{"records": [...]}` or `{"columns": {"feature": [...], ...}}`',
)
async def predict_batch(request: Request, state: StateDep) -> Response:
    model, variant = state.scoring.pick()
    body = await read_body(request, state.settings.max_body_bytes, state.settings.body_timeout_seconds)
    records = parse_batch(model.batch_model, body)
    answer = await state.scoring.predict_batch(model, variant, records)
    return json_response(
        BatchPredictionOut(
            predictions=answer.labels,
            probabilities=answer.probabilities,
            model_name=model.name,
            model_version=model.version,
            variant=variant,
            request_id=answer.request_id,
        )
    )
