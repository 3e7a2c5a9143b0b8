"""Request and response models. Record models are built from the served model's feature schema."""

from __future__ import annotations

import keyword
import re
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    create_model,
    model_validator,
)

from core.predictions.rows import unstorable
from core.schema import DatasetSchema, FeatureSpec

Prediction = float | int | str


def datatype(values: list[Any]) -> str:
    """The Open Inference Protocol datatype that holds all `values`: BOOL, INT64, FP64 or BYTES."""
    if all(isinstance(v, bool) for v in values):
        return "BOOL"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "INT64"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return "FP64"
    return "BYTES"


def storable(text: str) -> str:
    """A string the prediction log keeps exactly on every store; a 422 naming the field otherwise
    (`core.predictions.unstorable` says which strings and why)."""
    if (reason := unstorable(text)) is not None:
        raise ValueError(f"{reason}: send it without that character")
    return text


StoredText = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(storable)]
"""A client's string that is logged: 1 to 200 characters the log keeps exactly."""
EntityId = StoredText
"""The client's id for what a record describes (a customer, say): logged with its prediction, it
addresses the prediction's true outcome in `POST /feedback`."""
EntityIds = list[EntityId]
FEEDBACK_EXAMPLE: dict[str, Any] = {
    "outcomes": [
        {"request_id": "0f8e4c2a9b1d4e6f8a7c5b3d1e9f0a2b", "row": 0, "outcome": "yes"},
        {"id": "customer-1042", "outcome": "no"},
    ]
}


class PredictionOut(BaseModel):
    prediction: Prediction
    probabilities: dict[str, float] | None = Field(None, description="class → probability (classification)")
    model_name: str
    model_version: str
    variant: Literal["champion", "canary", "challenger"]
    request_id: str


class BatchPredictionOut(BaseModel):
    predictions: list[Prediction]
    probabilities: list[dict[str, float]] | None = None
    model_name: str
    model_version: str
    variant: Literal["champion", "canary", "challenger"]
    request_id: str
    model_versions: list[str] | None = Field(
        None,
        description="each row's version, when a canary rollout split the batch by entity id "
        "(model_version and variant then name the side that answered most rows)",
    )


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class PredictionLogOut(BaseModel):
    status: Literal["ok", "degraded", "catching_up"] = Field(
        description="degraded: writes fail and rows wait; catching_up: writes succeed again and the rows "
        "that waited are being written"
    )
    detail: str = Field(description="the status in words, with the pending rows or the write's error")
    pending_rows: int = Field(description="rows answered and not yet written, in memory or on disk")
    spilled_rows: int = Field(
        description="of the pending rows, those held on disk only (past the memory budget)"
    )
    dropped_rows: int = Field(description="rows answered and never written, since start-up")
    quarantined_rows: int = Field(
        description="rows the log's store refused for a value they hold, kept in its bitloop_quarantine "
        "table with the reason, since start-up"
    )


class Readiness(BaseModel):
    ready: bool
    model_name: str
    model_version: str | None
    detail: str
    prediction_log: PredictionLogOut


class RefusalOut(BaseModel):
    variant: str
    version: str
    reason: str


class FeatureOut(BaseModel):
    name: str
    kind: Literal["numeric", "categorical"]
    categories: list[str]
    nullable: bool
    typical: float | str | None = Field(
        None, description="the training median (numeric) or most frequent category, when profiled"
    )


class RolloutOut(BaseModel):
    """A rollout under way: the stable version and the canary, with their shares of traffic."""

    stable_version: str
    stable_share: float
    canary_version: str
    canary_share: float
    started_at: str
    min_requests: int = Field(description="canary records the decider needs before it may promote")
    deadline: str = Field(description="when an undecided rollout is rolled back")


class LastRolloutOut(BaseModel):
    version: str
    outcome: str = Field(description="promoted, rolled_back or aborted")
    reason: str
    at: str


class ModelInfo(BaseModel):
    name: str
    version: str
    run_id: str | None
    task: str
    target: str
    classes: list[Prediction]
    metrics: dict[str, float]
    data_version: str | None
    loaded_at: str
    features: list[FeatureOut]
    challenger_version: str | None
    runtime: str = Field(description="what answers for the champion: onnx (its compiled graph) or sklearn")
    runtime_detail: str = Field(description="why that runtime: the parity figures, or why not compiled")
    challenger_runtime: str | None
    refused: list[RefusalOut] = Field(
        default_factory=list, description="versions the aliases point at that this server refused to serve"
    )
    traffic_check: str | None = Field(
        None,
        description="how the champion scored the records the version it replaced answered, before it served",
    )
    rollout: RolloutOut | None = Field(None, description="the canary rollout under way, if any")
    last_rollout: LastRolloutOut | None = Field(None, description="how the last rollout ended")


class ServedModelOut(BaseModel):
    name: str
    default: bool = Field(
        description="whether /predict, /model and the other routes without a name answer for it"
    )
    state: Literal["serving", "unloaded", "no_champion", "refused"] = Field(
        description="serving: its champion answers; unloaded: past BITLOOP_API_MAX_LOADED_MODELS, "
        "loaded again by its next request; no_champion: the registry names none (yet); refused: the "
        "champion the registry names was refused (see /models/{name})"
    )
    version: str | None = Field(description="the champion's version, while loaded")
    runtime: str | None = Field(description="what answers for the champion: onnx or sklearn")
    task: str | None
    canary_version: str | None
    challenger_version: str | None
    last_used_seconds_ago: float = Field(description="since a request last asked for this model")
    cold_loads: int = Field(description="loads a request waited for, since the server started")
    unloads: int = Field(description="times it was unloaded as the least recently used")


class ModelsOut(BaseModel):
    max_loaded_models: int = Field(description="BITLOOP_API_MAX_LOADED_MODELS (0: no limit)")
    loaded: int = Field(description="models whose versions are in memory now")
    models: list[ServedModelOut]


MAX_ROW_INDEX = 2**31 - 1
"""The largest row the prediction log's row column holds on every store (PostgreSQL's INTEGER); no
batch comes near it, and a larger one is a 422 naming the field, never the store's overflow."""


class OutcomeIn(BaseModel):
    """One true outcome, addressed by `request_id` (and `row`, for a batch) or by `id`."""

    model_config = ConfigDict(extra="forbid")
    request_id: Annotated[str, Field(min_length=1, max_length=64), AfterValidator(storable)] | None = Field(
        None, description="the request_id the prediction was answered with"
    )
    row: Annotated[int, Field(ge=0, le=MAX_ROW_INDEX)] | None = Field(
        None, description="the record's position in its batch"
    )
    id: EntityId | None = Field(None, description="the entity id sent with the prediction (its newest)")
    outcome: StrictBool | StrictInt | StrictFloat | Annotated[StrictStr, AfterValidator(storable)] = Field(
        description="one of the model's classes, or the true value (regression)"
    )

    @model_validator(mode="after")
    def _one_address(self) -> OutcomeIn:
        if (self.request_id is None) == (self.id is None):
            raise ValueError("address the prediction by request_id (and row) or by id, not both")
        if self.row is not None and self.request_id is None:
            raise ValueError("row goes with request_id")
        return self


class FeedbackIn(BaseModel):
    """The body as documented: every item an `OutcomeIn`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [FEEDBACK_EXAMPLE]})
    outcomes: list[OutcomeIn] = Field(min_length=1)


class FeedbackBody(BaseModel):
    """The body as read: its items are checked one by one, so a bad one leaves the others recorded."""

    model_config = ConfigDict(extra="forbid")
    outcomes: list[Any] = Field(min_length=1)


class FeedbackItemOut(BaseModel):
    index: int = Field(description="the item's position in `outcomes`")
    status: Literal["invalid", "duplicate", "conflict", "unknown"]
    detail: str
    loc: list[str | int] | None = Field(
        None, description='for an invalid item, the offending field (`["body", "outcomes", 1, "outcome"]`)'
    )


class FeedbackOut(BaseModel):
    recorded: int
    invalid: int = Field(description="items refused, each listed in `items` with its field")
    duplicate: int
    conflict: int
    unknown: int
    items: list[FeedbackItemOut] = Field(description="every item not recorded, and why")


class ReloadOut(BaseModel):
    changed: bool
    champion_version: str | None
    challenger_version: str | None
    detail: str
    models: dict[str, str] = Field(
        default_factory=dict, description="what the check did for each served model"
    )


class ErrorOut(BaseModel):
    detail: str


# Every error the routes answer, described once; a route lists the codes it can give.
ERRORS: dict[int, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "an API key is required and was missing or wrong"},
    404: {
        "model": ErrorOut,
        "description": "the path names a model this server does not serve (GET /models)",
    },
    408: {"model": ErrorOut, "description": "the request body did not arrive in time"},
    409: {"model": ErrorOut, "description": "the served version was logged without what this needs"},
    415: {"model": ErrorOut, "description": "the body is not declared as `application/json`"},
    422: {
        "description": "invalid input: `detail` names each offending field (`loc`), including values "
        "the schema accepts but the model cannot score"
    },
    503: {
        "model": ErrorOut,
        "description": "no model has been promoted yet, or the prediction log refuses: `detail` says which",
    },
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a route that can answer these error codes."""
    return {code: ERRORS[code] for code in codes}


def _field_name(name: str, taken: set[str]) -> str:
    base = re.sub(r"\W", "_", name).strip("_") or "feature"
    if base[0].isdigit() or keyword.iskeyword(base) or base.startswith("model_") or hasattr(BaseModel, base):
        base = f"f_{base}"
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}_{n}"
    taken.add(candidate)
    return candidate


# Every candidate kind can hold this: forests cast inputs to float32, and the float64 models
# (scaling, linear terms) keep ~10^270 of headroom above it. Larger values are refused as input.
NUMERIC_LIMIT = float(np.finfo(np.float32).max)


def _annotation(spec: FeatureSpec, closed_categories: bool) -> Any:
    if spec.kind == "numeric":
        value: Any = Annotated[
            float, Field(strict=True, allow_inf_nan=False, ge=-NUMERIC_LIMIT, le=NUMERIC_LIMIT)
        ]
    elif closed_categories and spec.categories:
        value = Literal[tuple(spec.categories)]
    else:
        value = StoredText
    return value | None if spec.nullable else value


def build_record_model(schema: DatasetSchema, closed_categories: bool) -> type[BaseModel]:
    """A strict Pydantic model for one record: every feature by its own name, nothing else."""
    taken: set[str] = set()
    fields: dict[str, Any] = {}
    example: dict[str, Any] = {}
    for spec in schema.features:
        # A nullable feature may be left out: absent means missing, as null does.
        default = Field(None, alias=spec.name) if spec.nullable else Field(alias=spec.name)
        fields[_field_name(spec.name, taken)] = (_annotation(spec, closed_categories), default)
        example[spec.name] = spec.categories[0] if spec.kind == "categorical" and spec.categories else 1.0
    config = ConfigDict(extra="forbid", populate_by_name=False, json_schema_extra={"examples": [example]})
    return create_model("Record", __config__=config, **fields)


def build_batch_model(record: type[BaseModel], max_rows: int) -> type[BaseModel]:
    return create_model(
        "BatchRequest",
        __config__=ConfigDict(extra="forbid"),
        records=(Annotated[list[record], Field(min_length=1, max_length=max_rows)], ...),  # type: ignore[valid-type,arg-type]
        ids=(
            EntityIds | None,
            Field(None, description="the client's entity id of each record, logged with it"),
        ),
    )


# The Open Inference Protocol (v2) REST objects, as KServe, MLServer and Triton define them.
class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2Error(BaseModel):
    error: str


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]


class V2InputTensor(BaseModel):
    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] = Field(description="the values, row-major: flat, or nested as the shape says")


class V2RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class V2InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[V2InputTensor] = Field(min_length=1, description="one tensor per feature, named after it")
    outputs: list[V2RequestedOutput] | None = None


class V2OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any]


class V2InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str
    parameters: dict[str, Any] | None = None
    outputs: list[V2OutputTensor]
