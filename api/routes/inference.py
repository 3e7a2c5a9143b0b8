"""The Open Inference Protocol (v2) REST routes of KServe, MLServer and Triton, on the served model.

Each feature is one named input tensor of shape [rows] or [rows, 1]; the answer has the outputs
`predict` (labels or values) and, for classification, `predict_proba` ([rows, classes], in the
order `/model` lists the classes). Inference goes through the same validation, micro-batching,
prediction log and metrics as `/predict/batch`, A/B routing included. Every error answers the
protocol's `{"error": "..."}`, naming the input and row at fault. The request parameter `ids`
(one entity id per row) is logged with the predictions, as `ids` is in `/predict/batch`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError

from api.dataplane import Unavailable, UnscorableInput
from api.model import ServedModel
from api.routes.predict import json_response
from api.schemas import (
    V2Error,
    V2InferenceRequest,
    V2InferenceResponse,
    V2Live,
    V2ModelMetadata,
    V2OutputTensor,
    V2Ready,
    V2ServerMetadata,
    V2TensorMetadata,
    datatype,
)
from api.state import ProtocolStateDep, ServerState, require_api_key
from api.validation import read_body
from core.compiled import ONNX_RUNTIME
from core.errors import BitloopError
from core.predictions.rows import unstorable
from core.schema import DatasetSchema

NUMBERS = frozenset(
    {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP16", "FP32", "FP64"}
)
SHOWN_ERRORS = 10


class ProtocolError(BitloopError, ValueError):
    """A request the protocol's terms refuse, answered in the protocol's own form (`{"error": ...}`)
    by the route; `status` is the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _describe(errors: list[Any]) -> str:
    """Validation errors as one line naming each input and row: `input 'age', row 3: ...`."""
    parts = []
    for e in errors[:SHOWN_ERRORS]:
        loc = [p for p in e.get("loc", ()) if p not in ("body", "records")]
        if len(loc) >= 2 and isinstance(loc[0], int):
            parts.append(f"input {loc[1]!r}, row {loc[0]}: {e.get('msg')}")
        elif len(loc) == 1 and isinstance(loc[0], int):
            parts.append(f"row {loc[0]}: {e.get('msg')}")
        else:
            parts.append(f"{'.'.join(map(str, loc)) or 'body'}: {e.get('msg')}")
    more = len(errors) - SHOWN_ERRORS
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(V2Error(error=message[:2000]).model_dump(), status_code=status, headers=headers)


class OpenInferenceRoute(APIRoute):
    """Answers every error, whoever raised it, as the protocol's `{"error": "..."}`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except ProtocolError as err:
                return _error(err.status, str(err))
            except RequestValidationError as err:
                return _error(400, _describe(list(err.errors())))
            except UnscorableInput as err:
                return _error(400, _describe(err.errors))
            except Unavailable as err:
                return _error(503, str(err))
            except HTTPException as err:
                return _error(err.status_code, str(err.detail), err.headers)

        return route


router = APIRouter(prefix="/v2", tags=["open inference protocol"], route_class=OpenInferenceRoute)
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": V2Error, "description": description}
    for code, description in {
        400: "the request does not fit the model's inputs: `error` names the input and row",
        401: "an API key is required and was missing or wrong",
        404: "no such model or version is served here",
        503: "no model has been promoted yet, or the prediction log refuses",
    }.items()
}


def _ready(state: ServerState) -> bool:
    ready, _ = state.scoring.readiness()
    return ready and not state.drain.draining


def _served(state: ServerState, name: str, version: str | None) -> ServedModel:
    """The served version `name` (the champion unless a version is named); 404 for any other."""
    if name != state.manager.name:
        raise ProtocolError(
            f"model {name!r} is not served here; this server serves {state.manager.name!r}", 404
        )
    champion = state.scoring.champion()
    if version is None:
        return champion
    for model in (champion, state.manager.canary, state.manager.challenger):
        if model is not None and model.version == version:
            return model
    raise ProtocolError(
        f"version {version!r} of {name!r} is not served here (the champion is {champion.version})", 404
    )


def _numbers_type(schema: DatasetSchema) -> str:
    return "FP64" if schema.task == "regression" or not schema.classes else datatype(list(schema.classes))


@router.get("/health/live", response_model=V2Live, summary="Server liveness (200: live)")
async def live() -> V2Live:
    return V2Live(live=True)


@router.get(
    "/health/ready",
    response_model=V2Ready,
    responses={400: {"model": V2Ready}},
    summary="Server readiness (200: ready; 400: not ready)",
)
async def ready(state: ProtocolStateDep, response: Response) -> V2Ready:
    ok = _ready(state)
    response.status_code = 200 if ok else 400
    return V2Ready(ready=ok)


@router.get("", response_model=V2ServerMetadata, summary="Server metadata")
async def server_metadata() -> V2ServerMetadata:
    try:
        release = version("bitloop")
    except PackageNotFoundError:  # run from a source tree that was never installed
        release = "unknown"
    return V2ServerMetadata(name="bitloop", version=release, extensions=[])


def _metadata(state: ServerState, name: str, version: str | None) -> V2ModelMetadata:
    model = _served(state, name, version)
    schema = model.schema
    outputs = [V2TensorMetadata(name="predict", datatype=_numbers_type(schema), shape=[-1])]
    if schema.task == "classification":
        outputs.append(
            V2TensorMetadata(name="predict_proba", datatype="FP64", shape=[-1, len(model.classes)])
        )
    challenger = state.manager.challenger
    return V2ModelMetadata(
        name=model.name,
        versions=[model.version] if version or challenger is None else [model.version, challenger.version],
        platform="onnxruntime_onnx" if model.runtime == ONNX_RUNTIME else "sklearn",
        inputs=[
            V2TensorMetadata(name=f.name, datatype="FP64" if f.kind == "numeric" else "BYTES", shape=[-1, 1])
            for f in schema.features
        ],
        outputs=outputs,
    )


@router.get("/models/{name}", response_model=V2ModelMetadata, responses=ERRORS, summary="Model metadata")
async def model_metadata(name: str, state: ProtocolStateDep) -> V2ModelMetadata:
    return _metadata(state, name, None)


@router.get(
    "/models/{name}/versions/{model_version}",
    response_model=V2ModelMetadata,
    responses=ERRORS,
    summary="Model version metadata",
)
async def version_metadata(name: str, model_version: str, state: ProtocolStateDep) -> V2ModelMetadata:
    return _metadata(state, name, model_version)


@router.get(
    "/models/{name}/ready", response_model=V2Ready, responses=ERRORS, summary="Model readiness (200: ready)"
)
async def model_ready(name: str, state: ProtocolStateDep, response: Response) -> V2Ready:
    _served(state, name, None)
    return await ready(state, response)


def _flatten(data: list[Any]) -> list[Any]:
    """Row-major values of a flat or nested tensor body."""
    out: list[Any] = []
    for value in data:
        if isinstance(value, list):
            out.extend(_flatten(value))
        else:
            out.append(value)
    return out


def _records(request: V2InferenceRequest, schema: DatasetSchema, max_rows: int) -> list[dict[str, Any]]:
    """One record per row of the input tensors; ProtocolError naming the input that does not fit."""
    tensors = {}
    for tensor in request.inputs:
        if tensor.name in tensors:
            raise ProtocolError(f"input {tensor.name!r} is sent twice")
        tensors[tensor.name] = tensor
    names = schema.feature_names
    if unknown := sorted(set(tensors) - set(names)):
        raise ProtocolError(f"unknown inputs {unknown}: the model's inputs are {names}")
    if missing := [n for n in names if n not in tensors]:
        raise ProtocolError(f"missing inputs {missing}: send one tensor per feature")
    columns: dict[str, list[Any]] = {}
    rows: int | None = None
    for spec in schema.features:
        tensor = tensors[spec.name]
        wanted = "BYTES" if spec.kind == "categorical" else "FP64 (or another number type)"
        if (tensor.datatype == "BYTES") != (spec.kind == "categorical") or (
            spec.kind == "numeric" and tensor.datatype not in NUMBERS
        ):
            raise ProtocolError(f"input {spec.name!r} has datatype {tensor.datatype[:20]!r}: send {wanted}")
        if not 1 <= len(tensor.shape) <= 2 or tensor.shape[1:] not in ([], [1]):
            raise ProtocolError(f"input {spec.name!r} has shape {tensor.shape[:4]}: send [rows] or [rows, 1]")
        values = _flatten(tensor.data)
        if len(values) != tensor.shape[0]:
            raise ProtocolError(
                f"input {spec.name!r} holds {len(values)} values; its shape says {tensor.shape[0]}"
            )
        if rows is not None and tensor.shape[0] != rows:
            raise ProtocolError(f"input {spec.name!r} has {tensor.shape[0]} rows; {names[0]!r} has {rows}")
        rows = tensor.shape[0]
        columns[spec.name] = values
    if not rows or rows > max_rows:
        raise ProtocolError(f"the inputs have {rows} rows: send between 1 and {max_rows}")
    return [{name: columns[name][i] for name in names} for i in range(rows)]


def _ids(ids: Any, rows: int) -> list[str] | None:
    """The request parameter `ids`: one entity id per row (strings of 1 to 200 characters), logged with it."""
    if ids is None:
        return None
    if not isinstance(ids, list) or len(ids) != rows:
        raise ProtocolError(f"parameter 'ids' must be a list of {rows} ids, one per row")
    if bad := [i for i, v in enumerate(ids) if not isinstance(v, str) or not 1 <= len(v) <= 200]:
        raise ProtocolError(f"parameter 'ids', row {bad[0]}: an id is a string of 1 to 200 characters")
    for i, v in enumerate(ids):
        if reason := unstorable(v):
            raise ProtocolError(f"parameter 'ids', row {i}: an id {reason}")
    return ids


async def _infer(request: Request, state: ServerState, name: str, model_version: str | None) -> Response:
    settings = state.settings
    if model_version is None:
        _served(state, name, None)
        model, variant = state.scoring.pick()
    else:
        model, variant = _served(state, name, model_version), "champion"
        if state.manager.canary is model:
            variant = "canary"
        elif state.manager.challenger is model:
            variant = "challenger"
    body = await read_body(request, settings.max_body_bytes, settings.body_timeout_seconds, undeclared=True)
    try:
        inference = V2InferenceRequest.model_validate_json(body)
        records = model.batch_model.model_validate(
            {"records": _records(inference, model.schema, settings.max_batch_rows)}
        )
    except ValidationError as err:
        raise ProtocolError(_describe(err.errors(include_url=False))) from None
    wanted = [o.name for o in inference.outputs or []]
    if unknown := sorted(set(wanted) - {"predict", "predict_proba"}):
        raise ProtocolError(f"unknown outputs {unknown}: the model's outputs are predict and predict_proba")
    scored = records.model_dump(by_alias=True)["records"]
    ids = _ids((inference.parameters or {}).get("ids"), len(scored))
    answer = await state.scoring.predict_batch(model, variant, scored, ids)
    rows = len(answer.labels)
    outputs = [
        V2OutputTensor(name="predict", shape=[rows], datatype=datatype(answer.labels), data=answer.labels)
    ]
    if answer.probabilities is not None:
        classes = [str(c) for c in model.classes]
        outputs.append(
            V2OutputTensor(
                name="predict_proba",
                shape=[rows, len(classes)],
                datatype="FP64",
                data=[p[c] for p in answer.probabilities for c in classes],
            )
        )
    return json_response(
        V2InferenceResponse(
            model_name=model.name,
            model_version=answer.model.version,
            id=inference.id or answer.request_id,
            parameters={"variant": answer.variant, "request_id": answer.request_id}
            | ({} if answer.versions is None else {"model_versions": answer.versions}),
            outputs=[o for o in outputs if not wanted or o.name in wanted],
        )
    )


@router.post(
    "/models/{name}/infer",
    response_model=V2InferenceResponse,
    responses=ERRORS,
    dependencies=[Depends(require_api_key)],
    summary="Inference on the served model (A/B routing applies)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/V2InferenceRequest"}}},
        }
    },
)
async def infer(name: str, request: Request, state: ProtocolStateDep) -> Response:
    return await _infer(request, state, name, None)


@router.post(
    "/models/{name}/versions/{model_version}/infer",
    response_model=V2InferenceResponse,
    responses=ERRORS,
    dependencies=[Depends(require_api_key)],
    summary="Inference on one served version (the champion or the challenger)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/V2InferenceRequest"}}},
        }
    },
)
async def infer_version(name: str, model_version: str, request: Request, state: ProtocolStateDep) -> Response:
    return await _infer(request, state, name, model_version)
