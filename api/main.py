"""The model server: builds the app; models load in the lifespan, never at import."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import metrics
from api.batching import MicroBatcher
from api.dataplane import ScoringService
from api.drain import Drain
from api.drift_gauges import DriftWatcher
from api.manager import ModelManager
from api.outcomes import OutcomeStore
from api.predlog import PredictionLog
from api.quality_gauges import QualityWatcher
from api.residency import Residency
from api.routes import admin, feedback, health, inference, page, predict
from api.schemas import FeedbackIn, V2InferenceRequest, error_responses
from api.settings import ApiSettings
from api.state import ServerState
from api.validation import render_errors
from core.errors import BitloopError

log = logging.getLogger(__name__)
PREDICT_PATHS = frozenset({"/predict", "/predict/batch"})
DESCRIPTION = """Serves the registry's `@champion` (optionally `@challenger` for A/B or shadow traffic)
and swaps models when their aliases move. Serves several models at once: each under
`/models/{name}/…` (`GET /models` lists them), the default one also at the root. Request bodies follow
the model's feature schema, shown below as `Record` for the default model."""


def _predict_route(path: str) -> str:
    """The prediction route template a path is for, or "other": a closed set of labels."""
    if path in PREDICT_PATHS:
        return path
    parts = path.split("/", 3)  # "", "models", name, rest
    if len(parts) == 4 and parts[1] == "models" and parts[2] and f"/{parts[3]}" in PREDICT_PATHS:
        return f"/models/{{name}}/{parts[3]}"
    return "other"


class MetricsMiddleware:
    """Request count, latency and in-flight gauges per route template (pure ASGI: no body buffering)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        method = scope["method"]
        # Routing has not happened yet: label by a closed set so clients cannot mint series.
        in_progress = metrics.IN_PROGRESS.labels(method, _predict_route(scope["path"]))
        in_progress.inc()
        try:
            await self.app(scope, receive, capture)
        finally:
            in_progress.dec()
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            metrics.REQUESTS.labels(method, template, str(status)).inc()
            metrics.LATENCY.labels(method, template).observe(time.perf_counter() - started)


class InternalErrorMiddleware:
    """A 500 for an unexpected error, sent as an ordinary response.

    Starlette's own handler re-raises after answering, which makes uvicorn drop the keep-alive
    connection without `Connection: close`: clients see a reset. Here the error is logged and the
    connection stays usable.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception as err:
            log.error("unhandled error", exc_info=err, extra={"path": scope["path"]})
            if started:  # the answer is half sent: nothing better than closing is left
                raise
            response = JSONResponse({"detail": "internal error: the server logged it"}, status_code=500)
            await response(scope, receive, send)


REQUEST_BODIES = (FeedbackIn, V2InferenceRequest)
"""Bodies read by their route (with its own limits) and declared in the document by name."""


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    state: ServerState | None = getattr(app.state, "bitloop", None)
    model = None if state is None else state.manager.champion
    if model is None:
        awaiting_model = {
            "type": "object",
            "description": "no champion is loaded yet: the schema appears with it",
        }
        components.update(Record=awaiting_model, BatchRequest=awaiting_model)
    else:
        template = "#/components/schemas/{model}"
        components["Record"] = model.record_model.model_json_schema(ref_template=template)
        batch = model.batch_model.model_json_schema(ref_template=template)
        batch.pop("$defs", None)
        components["BatchRequest"] = batch
    for body in REQUEST_BODIES:  # routes that read their body themselves declare it by reference
        found = body.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(found.pop("$defs", {}))
        components[body.__name__] = found
    # /models/{name}/predict* take the features of the model the path names, which the document
    # cannot know: their bodies are described by where to find them.
    components["ModelRecord"] = {
        "type": "object",
        "description": "one record of the named model's features, as GET /models/{name} lists them "
        "(the default model's: Record)",
    }
    components["ModelBatchRequest"] = {
        "type": "object",
        "description": "records or columns of the named model's features, as BatchRequest for the "
        "default model (or an Arrow stream)",
    }
    for path, wanted in (
        ("/models/{name}/predict", "ModelRecord"),
        ("/models/{name}/predict/batch", "ModelBatchRequest"),
    ):
        body = schema.get("paths", {}).get(path, {}).get("post", {}).get("requestBody", {}).get("content", {})
        if "application/json" in body:
            body["application/json"]["schema"] = {"$ref": f"#/components/schemas/{wanted}"}
    if state is not None and state.settings.api_key is None:
        # No key configured: no route asks for one, so the document does not either.
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.pop("security", None)
        schema["components"].pop("securitySchemes", None)
    app.openapi_schema = schema
    return schema


def _model_state(
    settings: ApiSettings, name: str, prediction_log: PredictionLog, drain: Drain, outcomes: OutcomeStore
) -> ServerState:
    """One served model's parts, each its own (manager, micro-batcher, watchers: one model's slow or
    poisoned call never waits on another's), with the server's shared ones."""
    manager = ModelManager(settings, name)
    batcher = MicroBatcher(
        settings.inference_threads, settings.micro_batch_max_size, settings.micro_batch_max_wait_ms
    )
    drift_params, quality_params, promote_params = settings.monitoring_config(name)
    return ServerState(
        settings=settings,
        manager=manager,
        batcher=batcher,
        log=prediction_log,
        drift=DriftWatcher(settings, manager, drift_params),
        scoring=ScoringService(settings, manager, batcher, prediction_log),
        drain=drain,
        outcomes=outcomes,
        quality=QualityWatcher(settings, manager, quality_params, promote_params),
    )


async def model_path(
    name: Annotated[str, Path(description="a served model's registered name (GET /models lists them)")],
) -> None:
    """Declares /models/{name} in the routes' documentation; `api.state.get_state` reads it."""


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        prediction_log = PredictionLog.from_settings(settings)
        drain = Drain(settings.drain_seconds)
        outcomes = OutcomeStore(settings.prediction_log_url)
        models = {
            name: _model_state(settings, name, prediction_log, drain, outcomes)
            for name in settings.served_models()
        }
        default = next(iter(models.values()))
        app.state.bitloop = default
        app.state.models = models
        residency = Residency(
            {name: state.manager for name, state in models.items()}, settings.max_loaded_models
        )
        app.state.residency = residency
        default.manager.on_swap.append(lambda: setattr(app, "openapi_schema", None))
        await residency.start()
        for name, state in models.items():
            metrics.MODEL_LOADED.labels(name).set(0 if state.manager.resident else 1)
            state.batcher.start()
        results = await asyncio.gather(*(state.manager.refresh() for state in models.values()))
        # The libraries and the models are long-lived: keep them out of the collector's full passes,
        # which otherwise stall every request for ~0.2 s now and then under load.
        gc.collect()
        gc.freeze()
        log.info(
            "model server starting",
            extra={
                "models": {name: result.detail for name, result in zip(models, results, strict=True)},
                "registry": settings.mlflow_tracking_uri,
            },
        )
        for state in models.values():
            state.manager.start()
            state.drift.start()
            state.quality.start()
        drain.install()
        try:
            yield
        finally:
            for state in models.values():
                await state.drift.stop()
                await state.quality.stop()
                await state.manager.stop()
                await state.batcher.stop()
                await state.scoring.drain()
            written = prediction_log.close(settings.prediction_log_shutdown_seconds)
            outcomes.close()
            log.info(
                "model server stopped",
                extra={
                    "prediction_log_dropped_rows": written.dropped_rows,
                    "prediction_log_kept_on_disk_rows": written.pending_rows,
                    "log_error": written.error,
                },
            )

    # /docs and /redoc serve Swagger UI and ReDoc from the package, not a CDN: they work offline.
    app = FastAPIOffline(
        title="bitloop model server",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        static_url="/static/docs",
    )
    app.add_middleware(InternalErrorMiddleware)
    app.add_middleware(MetricsMiddleware)  # outermost: counts the 500s the inner one answers
    app.include_router(predict.router)
    app.include_router(inference.router)
    app.include_router(feedback.router)
    app.include_router(health.router)
    # Every served model's own routes under /models/{name}: the default model's, by name too.
    for router in (predict.router, feedback.router, health.model_router):
        app.include_router(
            router,
            prefix="/models/{name}",
            dependencies=[Depends(model_path)],
            responses=error_responses(404),
        )
    app.include_router(admin.router)
    app.include_router(page.router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": render_errors(exc.errors())}, status_code=422)

    @app.exception_handler(BitloopError)
    async def reported(_: Request, exc: BitloopError) -> JSONResponse:
        if exc.http_status is None:  # never meant to reach a client: a bug, InternalErrorMiddleware's 500
            raise exc
        return JSONResponse({"detail": exc.detail()}, status_code=exc.http_status)

    return app
