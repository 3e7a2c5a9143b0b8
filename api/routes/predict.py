"""Predictions: one record (micro-batched with concurrent requests) or a batch of records.

The routes parse and answer; `api.dataplane` picks the model, predicts, records and shadows.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BaseModel

from api.arrow import ARROW_STREAM, read_columns, wants_arrow, write_predictions
from api.schemas import BatchPredictionOut, PredictionOut, error_responses, storable
from api.state import StateDep, require_api_key
from api.validation import media_type, parse, parse_batch, read_body, records_from_columns
from core.predictions.rows import unstorable

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


EntityIdQuery = Annotated[
    Annotated[str, AfterValidator(storable)] | None,
    Query(
        alias="id",
        min_length=1,
        max_length=200,
        description="your id for what the record describes (a customer, say): logged with the prediction, "
        "it can address the prediction's true outcome in POST /feedback",
    ),
]
IdColumnQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=200,
        description="with an Arrow stream: the column holding each record's entity id (not a feature "
        'unless the model has one of that name); JSON bodies send "ids"',
    ),
]


def _query_error(name: str, msg: str) -> dict[str, Any]:
    return {"type": "value_error", "loc": ("query", name), "msg": msg}


def _id_column(columns: dict[str, list[Any]], name: str, features: list[str]) -> list[str]:
    """The entity ids held in the Arrow stream's column `name`, taken out of the features unless the
    model has a feature of that name; a 422 names the column and the row of a bad id."""
    if name not in columns:
        raise RequestValidationError([_query_error("id_column", f"the stream has no column {name!r}")])
    values = columns[name]
    bad = []
    for i, v in enumerate(values):
        loc = ("body", "columns", name, i)
        if not isinstance(v, str) or not 1 <= len(v) <= 200:
            bad.append({"type": "string_type", "loc": loc, "msg": "an id is a string of 1 to 200 characters"})
        elif reason := unstorable(v):
            bad.append({"type": "value_error", "loc": loc, "msg": f"an id {reason}"})
    if bad:
        raise RequestValidationError(bad)
    if name not in features:
        del columns[name]
    return list(values)


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
async def predict(request: Request, state: StateDep, entity_id: EntityIdQuery = None) -> Response:
    model, variant = state.scoring.pick(entity_id)
    body = await read_body(request, state.settings.max_body_bytes, state.settings.body_timeout_seconds)
    record = parse(model.record_model, body).model_dump(by_alias=True)
    answer = await state.scoring.predict(model, variant, record, entity_id)
    return json_response(
        PredictionOut(
            prediction=answer.labels[0],
            probabilities=None if answer.probabilities is None else answer.probabilities[0],
            model_name=model.name,
            model_version=answer.model.version,
            variant=answer.variant,
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
async def predict_batch(request: Request, state: StateDep, id_column: IdColumnQuery = None) -> Response:
    model, variant = state.scoring.pick()
    settings = state.settings
    body = await read_body(request, settings.max_body_bytes, settings.body_timeout_seconds, arrow=True)
    if media_type(request) == ARROW_STREAM:
        columns = read_columns(body, settings.max_batch_rows, settings.max_body_bytes)
        ids = None if id_column is None else _id_column(columns, id_column, model.schema.feature_names)
        records = records_from_columns(model.batch_model, columns)
    elif id_column is not None:
        raise RequestValidationError(
            [_query_error("id_column", 'applies to Arrow streams: a JSON body sends its ids as "ids"')]
        )
    else:
        records, ids = parse_batch(model.batch_model, body)
    answer = await state.scoring.predict_batch(model, variant, records, ids)
    if wants_arrow(request.headers.get("accept", "")):
        about = {"model_name": model.name, "model_version": answer.model.version}
        about |= {"variant": answer.variant, "request_id": answer.request_id}
        if answer.versions is not None:
            about["model_versions"] = ",".join(answer.versions)
        stream = write_predictions(
            answer.labels, answer.probabilities, [str(c) for c in model.classes], about
        )
        return Response(stream, media_type=ARROW_STREAM)
    return json_response(
        BatchPredictionOut(
            predictions=answer.labels,
            probabilities=answer.probabilities,
            model_name=model.name,
            model_version=answer.model.version,
            variant=answer.variant,
            request_id=answer.request_id,
            model_versions=answer.versions,
        )
    )
