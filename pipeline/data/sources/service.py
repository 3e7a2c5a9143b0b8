"""The data-source service: simulated customer batches over HTTP, from a world that can drift.

`GET /batch?n=&seed=&drift=` draws a labelled batch (training data); without `drift` it draws
from the world's current drift level, which `PUT /world` changes (the drift demo shifts the world
this way, so fresh training data and live traffic drift together). `GET /world` reads the level.
`concept`, when set, moves the relation between features and churn apart from the population.

`GET /customers?n=&seed=` hands out live customers to score (no label); `POST /outcomes` tells
what became of them once the world's `outcome_delay_seconds` have passed (`pipeline.data.sources.live`).
With `--world-file` (the local stack's `.bitloop/datasource-world.json`) the world survives a restart.
"""

from __future__ import annotations

import io
import logging
import os
import time
from pathlib import Path
from typing import Annotated, Literal

import pandas as pd
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from core.errors import BitloopError
from pipeline.data.sources.live import MAX_ROWS, draw, release
from pipeline.data.sources.simulated import simulate_churn

DRIFT_HEADER = "X-Bitloop-Drift"
log = logging.getLogger(__name__)


MAX_OUTCOME_IDS = 10_000


class World(BaseModel):
    drift: Annotated[
        float, Field(ge=0.0, le=1.0, description="0 = reference population, 1 = fully drifted")
    ] = 0.0
    concept: Annotated[
        float | None,
        Field(ge=0.0, le=1.0, description="drift of the relation between features and churn; null: as drift"),
    ] = None
    outcome_delay_seconds: Annotated[
        float,
        Field(
            ge=0.0, le=365 * 86400, description="how long after a customer is handed out its outcome is known"
        ),
    ] = 60.0

    @property
    def concept_level(self) -> float:
        return self.drift if self.concept is None else self.concept


class OutcomesIn(BaseModel):
    ids: Annotated[
        list[Annotated[str, Field(max_length=200)]], Field(min_length=1, max_length=MAX_OUTCOME_IDS)
    ]


class OutcomeOut(BaseModel):
    id: str
    outcome: int


class OutcomesOut(BaseModel):
    outcomes: list[OutcomeOut] = Field(description="the customers whose outcome is known now")
    pending: list[str] = Field(description="outcomes not known yet (outcome_delay_seconds): ask again later")
    unknown: list[str] = Field(description="ids this world never handed out")


class WorldNotSaved(BitloopError, RuntimeError):
    """The world's file cannot be written: the change is refused rather than forgotten at restart."""


def load_world(path: Path | None, default: World) -> World:
    """The world saved in `path` (the stack's state), else `default`: a restarted data source goes on
    from the world it had, as the registry goes on from the champion trained on it."""
    if path is None or not path.is_file():
        return default
    try:
        return World.model_validate_json(path.read_text())
    except (OSError, ValueError) as err:
        raise WorldNotSaved(f"the world file {path} cannot be read ({err}): fix or delete it") from None


def save_world(path: Path | None, world: World) -> None:
    """Write the world to `path` atomically (a temporary file renamed over it)."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(path.name + ".tmp")
        scratch.write_text(world.model_dump_json())
        os.replace(scratch, path)
    except OSError as err:
        raise WorldNotSaved(f"the world file {path} cannot be written ({err.strerror or err})") from None


def create_app(
    drift: float = 0.0, outcome_delay_seconds: float = 60.0, world_file: Path | None = None
) -> FastAPI:
    """The service; with `world_file` the world survives a restart (the local stack keeps it in its
    state directory), and the flags give only a new world's levels."""
    app = FastAPI(title="bitloop data source", description=__doc__)
    app.state.world = load_world(world_file, World(drift=drift, outcome_delay_seconds=outcome_delay_seconds))

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

    @app.put(
        "/world",
        response_model=World,
        responses={503: {"description": "the world file cannot be written; the world is unchanged"}},
        summary="Shift the world: later batches and customers drift this much",
    )
    def set_world(change: World) -> World:
        """Fields left out keep their value (`{"concept": 1}` moves the concept alone). A world that
        cannot be saved is not changed (503)."""
        world: World = app.state.world.model_copy(update=change.model_dump(exclude_unset=True))
        try:
            save_world(world_file, world)
        except WorldNotSaved as err:
            raise HTTPException(status_code=503, detail=str(err)) from None
        log.info("world changed", extra={"from": app.state.world.model_dump(), "to": world.model_dump()})
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
        concept: Annotated[
            float | None,
            Query(
                ge=0.0,
                le=1.0,
                description="the relation's drift, with an explicit drift; default: it follows the drift",
            ),
        ] = None,
        format: Annotated[Literal["csv", "parquet"], Query()] = "csv",
    ) -> Response:
        world: World = app.state.world
        if drift is None:
            drift, concept = world.drift, world.concept
        frame = simulate_churn(n, seed, drift, concept)
        return _table(frame, format, {DRIFT_HEADER: str(drift)})

    @app.get(
        "/customers",
        responses={200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}}},
        summary="Live customers to score, without their outcome; customer_id asks POST /outcomes for it",
    )
    def customers(
        n: Annotated[int, Query(ge=1, le=MAX_ROWS, description="customers")] = 100,
        seed: Annotated[int, Query(ge=0, le=2**63 - 1, description="which customers")] = 0,
        format: Annotated[Literal["csv", "parquet"], Query()] = "csv",
    ) -> Response:
        world: World = app.state.world
        frame = draw(n, seed, world.drift, world.concept_level, time.time() + world.outcome_delay_seconds)
        return _table(frame, format, {DRIFT_HEADER: str(world.drift)})

    @app.post(
        "/outcomes",
        response_model=OutcomesOut,
        summary="What became of live customers, once the outcome delay they were handed out with has passed",
    )
    def outcomes(body: OutcomesIn) -> OutcomesOut:
        found = release(body.ids, time.time())
        return OutcomesOut(
            outcomes=[OutcomeOut(id=i, outcome=o) for i, o in found.outcomes.items()],
            pending=found.pending,
            unknown=found.unknown,
        )

    return app


def _table(frame: pd.DataFrame, format: str, headers: dict[str, str]) -> Response:
    if format == "parquet":
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return Response(buffer.getvalue(), media_type="application/vnd.apache.parquet", headers=headers)
    return Response(frame.to_csv(index=False), media_type="text/csv", headers=headers)
