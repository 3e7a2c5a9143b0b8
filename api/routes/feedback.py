"""`POST /feedback`: true outcomes of earlier predictions (`api.outcomes`)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError

from api.outcomes import Outcome, canonical
from api.routes.predict import json_response
from api.schemas import FeedbackIn, FeedbackItemOut, FeedbackOut, error_responses
from api.state import StateDep, require_api_key
from api.validation import parse, read_body

router = APIRouter(tags=["feedback"], dependencies=[Depends(require_api_key)])
DETAILS = {
    "duplicate": "this outcome is already stored for the prediction",
    "conflict": "another outcome is already stored for the prediction: it stays",
    "unknown": "the prediction log holds no answered prediction with this address (yet: a prediction is "
    "written within BITLOOP_API_PREDICTION_LOG_FLUSH_MS; send it again later)",
}


@router.post(
    "/feedback",
    response_model=FeedbackOut,
    responses=error_responses(401, 408, 415, 422, 503),
    summary="Record true outcomes of earlier predictions",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FeedbackIn"}}},
        }
    },
)
async def feedback(request: Request, state: StateDep) -> Response:
    model = state.scoring.champion()
    settings = state.settings
    body = await read_body(request, settings.max_body_bytes, settings.body_timeout_seconds)
    items = parse(FeedbackIn, body).outcomes  # type: ignore[attr-defined]
    if len(items) > settings.max_batch_rows:
        raise RequestValidationError(
            [
                {
                    "type": "too_long",
                    "loc": ("body", "outcomes"),
                    "msg": f"{len(items)} outcomes: send at most {settings.max_batch_rows} at once",
                }
            ]
        )
    outcomes, errors = [], []
    for i, item in enumerate(items):
        try:
            value = canonical(item.outcome, model.schema.task, list(model.classes))
        except ValueError as err:
            errors.append({"type": "outcome", "loc": ("body", "outcomes", i, "outcome"), "msg": str(err)})
            continue
        outcomes.append(Outcome(item.request_id, item.row or 0, item.id, value))
    if errors:
        raise RequestValidationError(errors)
    statuses = await asyncio.to_thread(state.outcomes.record, outcomes)
    counts: dict[str, Any] = {s: statuses.count(s) for s in ("recorded", "duplicate", "conflict", "unknown")}
    return json_response(
        FeedbackOut(
            **counts,
            items=[
                FeedbackItemOut(index=i, status=s, detail=DETAILS[s])
                for i, s in enumerate(statuses)
                if s != "recorded"
            ],
        )
    )
