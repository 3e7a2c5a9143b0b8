"""Predictions: one record (micro-batched with concurrent requests) or a batch of records.

The routes parse and answer; `api.scoring` picks the model, predicts, records and shadows.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel

from api.arrow import ARROW_STREAM, read_columns, wants_arrow, write_predictions
from api.schemas import BatchPredictionOut, PredictionOut, error_responses
from api.state import StateDep, require_api_key
from api.validation import media_type, parse, parse_batch, read_body, records_from_columns

router = APIRouter(tags=["predict"], dependencies=[Depends(require_api_key)])
ERRORS = error_responses(401, 408, 415, 422, 503)


def json_response(out: BaseModel) -> Response:
    """Serialise with pydantic directly: FastAPI's generic encoder costs milliseconds per large batch."""
    return Response(out.model_dump_json(), media_type="application/json")


BINARY = {"schema": {"type": "string", "format": "binary"}}
BATCH_FORMATS = f"""One list of records, one list of values per feature (`columns`), or an Apache Arrow IPC
stream (`Content-Type: {ARROW_STREAM}`, one column per feature, any number of record batches, null
for a missing value). With `Accept: {ARROW_STREAM}` the answer is an Arrow stream too: a
`prediction` column, a `probability_<class>` column per class (classification), and the model name,
version, variant and request id in the schema's metadata (`bitloop.model_version`, ...). A 422
names the field and row: `["body", "records", row, field]` or `["body", "columns", field, row]`."""


def _body(ref: str, arrow: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}
    if arrow:
        content[ARROW_STREAM] = BINARY
    return {"requestBody": {"required": True, "content": content}}


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
    responses={
        **ERRORS,
        200: {"content": {ARROW_STREAM: {"schema": {"type": "string", "format": "binary"}}}},
    },
    openapi_extra=_body("BatchRequest", arrow=True),
    summary="Predict a batch: records, columns or an Arrow stream",
    description=BATCH_FORMATS,
)
async def predict_batch(request: Request, state: StateDep) -> Response:
    model, variant = state.scoring.pick()
    settings = state.settings
    body = await read_body(request, settings.max_body_bytes, settings.body_timeout_seconds, arrow=True)
    if media_type(request) == ARROW_STREAM:
        columns = read_columns(body, settings.max_batch_rows, settings.max_body_bytes)
        records = records_from_columns(model.batch_model, columns)
    else:
        records = parse_batch(model.batch_model, body)
    answer = await state.scoring.predict_batch(model, variant, records)
    if wants_arrow(request.headers.get("accept", "")):
        about = {"model_name": model.name, "model_version": model.version}
        about |= {"variant": variant, "request_id": answer.request_id}
        stream = write_predictions(
            answer.labels, answer.probabilities, [str(c) for c in model.classes], about
        )
        return Response(stream, media_type=ARROW_STREAM)
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
