"""Reading and validating request bodies against the served model's schema, with 422s that name fields."""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError


def _error(loc: tuple[Any, ...], msg: str, kind: str) -> dict[str, Any]:
    return {"type": kind, "loc": ("body", *loc), "msg": msg}


async def read_json(request: Request, limit: int) -> Any:
    """The JSON body, refusing more than `limit` bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestValidationError(
            [_error((), f"body is {declared} bytes; the limit is {limit}", "too_large")]
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestValidationError(
                [_error((), f"body exceeds the limit of {limit} bytes", "too_large")]
            )
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestValidationError([_error((), f"body is not valid JSON: {err}", "json_invalid")]) from None


def parse(model: type[BaseModel], payload: Any) -> BaseModel:
    try:
        return model.model_validate(payload)
    except ValidationError as err:
        raise RequestValidationError(
            [
                {"type": e["type"], "loc": ("body", *e["loc"]), "msg": e["msg"], "input": e.get("input")}
                for e in err.errors()
            ]
        ) from None


def _safe(value: Any) -> Any:
    if value is None or isinstance(value, bool | str | int):
        return value if not isinstance(value, str) else value[:200]
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return repr(value)[:200]


def render_errors(errors: Any) -> list[dict[str, Any]]:
    """Validation errors as JSON-safe dicts (NaN inputs and large values are shown as short text)."""
    out = []
    for e in errors:
        item = {"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg")}
        if "input" in e and not isinstance(e["input"], dict | list):
            item["input"] = _safe(e["input"])
        out.append(item)
    return out
