"""Reading and validating request bodies against the served model's schema, with 4xx that name fields.

Bodies are parsed and validated in one pass by pydantic's JSON parser, which bounds what hostile
input can cost: nesting deeper than its recursion limit, numbers too long to represent and strings
that are not valid Unicode (lone surrogates) are all `json_invalid`, a 422, never a crash.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from typing import Any

from fastapi import HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api import metrics
from api.arrow import ARROW_STREAM
from api.schemas import EntityIds

JSON = "application/json"
MAX_ERRORS = 50
"""Errors listed in one 422; a batch of a thousand bad records would otherwise answer megabytes."""
MAX_ECHO = 200


def _error(loc: tuple[Any, ...], msg: str, kind: str) -> dict[str, Any]:
    return {"type": kind, "loc": ("body", *loc), "msg": msg}


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def require_json(request: Request, undeclared: bool = False, arrow: bool = False) -> None:
    """415 unless the body is declared JSON (or, with `undeclared`, not declared at all, as inference
    protocol clients send it; with `arrow`, an Arrow IPC stream): a cross-site form post (text/plain)
    is never answered."""
    declared = request.headers.get("content-type", "")
    if undeclared and not declared:
        return
    media = media_type(request)
    if arrow and media == ARROW_STREAM:
        return
    if media != JSON and not (media.startswith("application/") and media.endswith("+json")):
        wanted = f"{JSON} or {ARROW_STREAM}" if arrow else JSON
        shown = f", not {declared[:100]!r}" if declared else ""
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"send the body as Content-Type: {wanted}{shown}"
        )


async def read_body(
    request: Request, limit: int, timeout: float, undeclared: bool = False, arrow: bool = False
) -> bytes:
    """The body, refusing more than `limit` bytes without reading them all, within `timeout` seconds."""
    require_json(request, undeclared, arrow)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestValidationError(
            [_error((), f"body is {declared} bytes; the limit is {limit}", "too_large")]
        )
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise RequestValidationError(
                        [_error((), f"body exceeds the limit of {limit} bytes", "too_large")]
                    )
                chunks.append(chunk)
    except TimeoutError:
        metrics.BODY_TIMEOUTS.inc()
        # The rest of the body will never be read: the connection cannot be reused.
        raise HTTPException(
            status.HTTP_408_REQUEST_TIMEOUT,
            f"the request body did not arrive within {timeout:g} s",
            headers={"Connection": "close"},
        ) from None
    return b"".join(chunks)


def parse(model: type[BaseModel], body: bytes) -> BaseModel:
    """Parse and validate a JSON body in one pass; every problem is a 422 naming its field."""
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in err.errors(include_url=False, include_context=False)]
        ) from None


class ColumnarBatch(BaseModel):
    """`{"columns": {"age": [...], ...}}`: one list per feature, the same length each."""

    model_config = ConfigDict(extra="forbid")
    columns: dict[str, list[Any]] = Field(min_length=1)
    ids: EntityIds | None = None


def parse_batch(model: type[BaseModel], body: bytes) -> tuple[list[dict[str, Any]], list[str] | None]:
    """A batch body as records and their entity ids (`ids`, optional), from `{"records": [...]}` or
    `{"columns": {...}}`; a 422 names the field and the row (`["body", "records", row, field]`, or
    `["body", "columns", field, row]`)."""
    try:
        batch = model.model_validate_json(body)
        records = list(batch.model_dump(by_alias=True)["records"])
        return records, check_ids(batch.ids, len(records))  # type: ignore[attr-defined]
    except ValidationError as err:
        errors = err.errors(include_url=False, include_context=False)
        if not any(e["loc"] == ("columns",) and e["type"] == "extra_forbidden" for e in errors):
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None
    columnar = parse(ColumnarBatch, body)
    records = records_from_columns(model, columnar.columns)  # type: ignore[attr-defined]
    return records, check_ids(columnar.ids, len(records))  # type: ignore[attr-defined]


def check_ids(ids: list[str] | None, rows: int) -> list[str] | None:
    """The entity ids, when there is one per record; a 422 at `["body", "ids"]` otherwise."""
    if ids is not None and len(ids) != rows:
        raise RequestValidationError(
            [_error(("ids",), f"has {len(ids)} ids; the batch has {rows} rows", "ids")]
        )
    return ids


def records_from_columns(model: type[BaseModel], columns: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Validated records from one list of values per feature; a 422 names `["body", "columns", field,
    row]` (or the column whose length differs from the others')."""
    if not columns:
        raise RequestValidationError([_error(("columns",), "send at least one column", "too_short")])
    counts = Counter(len(values) for values in columns.values())
    rows = counts.most_common(1)[0][0]
    if len(counts) > 1:
        raise RequestValidationError(
            [
                _error(("columns", name), f"has {len(values)} values; the other columns have {rows}", "rows")
                for name, values in columns.items()
                if len(values) != rows
            ]
        )
    records = [{name: values[i] for name, values in columns.items()} for i in range(rows)]
    try:
        return list(model.model_validate({"records": records}).model_dump(by_alias=True)["records"])
    except ValidationError as err:
        raise RequestValidationError(
            [
                {**e, "loc": ("body", *_columnar(e["loc"]))}
                for e in err.errors(include_url=False, include_context=False)
            ]
        ) from None


def _columnar(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """A records location (`records`, row, field) as the columnar body's (`columns`, field, row)."""
    if len(loc) >= 3 and loc[0] == "records":
        return ("columns", loc[2], loc[1], *loc[3:])
    return ("columns", *loc[1:]) if loc[:1] == ("records",) else loc


def _text(value: str) -> str:
    """Short, and encodable: a lone surrogate is shown escaped instead of crashing the response."""
    return value[:MAX_ECHO].encode("utf-8", "backslashreplace").decode("utf-8")


def _safe(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):  # a huge integer is shown by its first digits
        return value if abs(value) < 10**18 else str(value)[:40] + "…"
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return None


def render_errors(errors: Any) -> list[dict[str, Any]]:
    """Validation errors as JSON-safe dicts: short inputs only, at most MAX_ERRORS of them."""
    errors = list(errors)
    out = []
    for e in errors[:MAX_ERRORS]:
        loc = [part if isinstance(part, int) else _text(str(part)) for part in e.get("loc", ())]
        item: dict[str, Any] = {"type": e.get("type"), "loc": loc, "msg": _text(str(e.get("msg", "")))}
        # The whole body is the input of a body-level error: never echo it.
        if len(loc) > 1 and "input" in e and (shown := _safe(e["input"])) is not None:
            item["input"] = shown
        out.append(item)
    if len(errors) > MAX_ERRORS:
        out.append(
            {
                "type": "too_many_errors",
                "loc": ["body"],
                "msg": f"{len(errors) - MAX_ERRORS} more errors not shown; fix these and send again",
            }
        )
    return out
