"""`POST /feedback`: true outcomes of earlier predictions (`api.outcomes`)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api import metrics
from api.outcomes import STATUSES, Outcome, canonical
from api.schemas import FeedbackBody, FeedbackItemOut, FeedbackOut, OutcomeIn, error_responses
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
    """Every valid item is recorded; each invalid one is listed with its field. A request with no
    valid item at all is a 422 naming each."""
    model = state.scoring.champion()
    settings = state.settings
    body = await read_body(request, settings.max_body_bytes, settings.body_timeout_seconds)
    items = parse(FeedbackBody, body).outcomes  # type: ignore[attr-defined]
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
    outcomes: list[Outcome] = []
    positions: list[int] = []
    errors: dict[
        int, list[dict[str, Any]]
    ] = {}  # an invalid item's position: its problems, as a 422 names them
    for i, raw in enumerate(items):
        where = ("body", "outcomes", i)
        try:
            item = OutcomeIn.model_validate(raw)
            value = canonical(item.outcome, model.schema.task, list(model.classes))
        except ValidationError as err:
            errors[i] = [
                {**e, "loc": (*where, *e["loc"])}
                for e in err.errors(include_url=False, include_context=False)
            ]
            continue
        except ValueError as err:
            errors[i] = [{"type": "outcome", "loc": (*where, "outcome"), "msg": str(err)}]
            continue
        outcomes.append(Outcome(item.request_id, item.row or 0, item.id, value))
        positions.append(i)
    if not outcomes:
        raise RequestValidationError([e for found in errors.values() for e in found])
    metrics.FEEDBACK.labels(model.name, "invalid").inc(len(errors))
    statuses = await asyncio.to_thread(state.outcomes.record, model.name, outcomes)
    listed = [
        FeedbackItemOut(
            index=i, status="invalid", detail="; ".join(e["msg"] for e in found), loc=list(found[0]["loc"])
        )
        for i, found in errors.items()
    ] + [
        FeedbackItemOut(index=i, status=s, detail=DETAILS[s])
        for i, s in zip(positions, statuses, strict=True)
        if s != "recorded"
    ]
    counts: dict[str, Any] = {s: statuses.count(s) for s in STATUSES}
    answer = FeedbackOut(**counts, invalid=len(errors), items=sorted(listed, key=lambda item: item.index))
    # Without nulls: only an invalid item has a `loc`.
    return Response(answer.model_dump_json(exclude_none=True), media_type="application/json")
