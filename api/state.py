"""The server's parts, built in the lifespan; routes receive them through `StateDep`.

It holds dependencies only: what they do together is `api.dataplane`.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader

from api.batching import MicroBatcher
from api.dataplane import ScoringService
from api.drain import Drain
from api.drift_gauges import DriftWatcher
from api.manager import ModelManager
from api.outcomes import OutcomeStore
from api.predlog import PredictionLog
from api.quality_gauges import QualityWatcher
from api.settings import ApiSettings


@dataclass
class ServerState:
    """One served model's parts (its manager, batcher, scoring, drift and quality watchers) with the
    server's shared ones (settings, prediction log, outcomes, drain): routes see one model at a time."""

    settings: ApiSettings
    manager: ModelManager
    batcher: MicroBatcher
    log: PredictionLog
    drift: DriftWatcher
    scoring: ScoringService
    drain: Drain
    outcomes: OutcomeStore
    quality: QualityWatcher


# Dependencies are `async def`: FastAPI runs a plain `def` one on its thread pool, a thread hop per
# request that cost a third of a single prediction's time under load (make bench).
async def get_state(request: Request) -> AsyncIterator[ServerState]:
    """The model a route answers for: the one its path names (`/models/{name}/...`), else the default;
    loaded, and kept loaded until the route has answered (`api.residency`)."""
    name = request.path_params.get("name")
    models: dict[str, ServerState] = request.app.state.models
    if name is None:
        found: ServerState = request.app.state.bitloop
    elif name in models:
        found = models[name]
    else:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"model {name[:200]!r} is not served here: GET /models lists those that are",
        )
    async with request.app.state.residency.hold(found.manager.name):
        yield found


async def get_protocol_state(request: Request) -> AsyncIterator[ServerState]:
    """The Open Inference Protocol's routes: the model its path names, else the default one, whose
    routes then answer a name it does not serve with the protocol's own 404."""
    models: dict[str, ServerState] = request.app.state.models
    found: ServerState = models.get(request.path_params.get("name", ""), request.app.state.bitloop)
    async with request.app.state.residency.hold(found.manager.name):
        yield found


StateDep = Annotated[ServerState, Depends(get_state)]
ProtocolStateDep = Annotated[ServerState, Depends(get_protocol_state)]
_api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="Required when the server is started with BITLOOP_API_API_KEY",
)


async def require_api_key(request: Request, key: Annotated[str | None, Depends(_api_key_header)]) -> None:
    """Settings are the server's, whichever model a route is for: no model is looked up (or loaded)
    for a request without its key."""
    expected = request.app.state.bitloop.settings.api_key
    if expected is None:
        return
    if key is None or not secrets.compare_digest(key.encode(), expected.get_secret_value().encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong X-API-Key header",
            headers={"WWW-Authenticate": "APIKey"},
        )
