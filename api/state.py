"""The server's parts, built in the lifespan; routes receive them through `StateDep`.

It holds dependencies only: what they do together is `api.dataplane`.
"""

from __future__ import annotations

import secrets
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
async def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.bitloop
    return state


StateDep = Annotated[ServerState, Depends(get_state)]
_api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="Required when the server is started with BITLOOP_API_API_KEY",
)


async def require_api_key(state: StateDep, key: Annotated[str | None, Depends(_api_key_header)]) -> None:
    expected = state.settings.api_key
    if expected is None:
        return
    if key is None or not secrets.compare_digest(key.encode(), expected.get_secret_value().encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong X-API-Key header",
            headers={"WWW-Authenticate": "APIKey"},
        )
