"""The data-source service: simulated customer batches over HTTP, from a world that can drift.

`GET /batch?n=&seed=&drift=` draws a batch; without `drift` it draws from the world's current
drift level, which `PUT /world` changes (the drift demo shifts the world this way, so fresh
training data and live traffic drift together). `GET /world` reads the level.
"""

from __future__ import annotations

import io
import logging
from typing import Annotated, Literal

from fastapi import FastAPI, Query
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from pipeline.sources.simulated import simulate_churn

MAX_ROWS = 100_000
DRIFT_HEADER = "X-Bitloop-Drift"
log = logging.getLogger(__name__)


class World(BaseModel):
    drift: Annotated[float, Field(ge=0.0, le=1.0, description="0 = reference population, 1 = fully drifted")]


def create_app(drift: float = 0.0) -> FastAPI:
    app = FastAPI(title="bitloop data source", description=__doc__)
    app.state.world = World(drift=drift)

    @app.get("/", summary="What this service serves")
    def index() -> dict[str, object]:
        endpoints = {
            f"{method} {route.path}": route.summary or route.name
            for route in app.routes
            if isinstance(route, APIRoute) and route.path != "/"
            for method in sorted(route.methods)
        }
        return {"service": app.title, "world": app.state.world.drift, "endpoints": endpoints}

    @app.get("/health", summary="Liveness")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/world", response_model=World, summary="The drift level batches are drawn from by default")
    def world() -> World:
        return app.state.world  # type: ignore[no-any-return]

    @app.put("/world", response_model=World, summary="Shift the world: later batches drift this much")
    def set_world(world: World) -> World:
        log.info("world drift changed", extra={"from": app.state.world.drift, "to": world.drift})
        app.state.world = world
        return world

    @app.get(
        "/batch",
        responses={200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}}},
        summary="A seeded batch; the drift used is in the X-Bitloop-Drift header",
    )
    def batch(
        n: Annotated[int, Query(ge=1, le=MAX_ROWS, description="rows in the batch")] = 1000,
        seed: Annotated[int, Query(ge=0, description="same seed and drift, same rows")] = 0,
        drift: Annotated[
            float | None,
            Query(ge=0.0, le=1.0, description="0 = reference, 1 = drifted; default: the world's"),
        ] = None,
        format: Annotated[Literal["csv", "parquet"], Query()] = "csv",
    ) -> Response:
        level = app.state.world.drift if drift is None else drift
        frame = simulate_churn(n, seed, level)
        headers = {DRIFT_HEADER: str(level)}
        if format == "parquet":
            buffer = io.BytesIO()
            frame.to_parquet(buffer, index=False)
            return Response(buffer.getvalue(), media_type="application/vnd.apache.parquet", headers=headers)
        return Response(frame.to_csv(index=False), media_type="text/csv", headers=headers)

    return app
