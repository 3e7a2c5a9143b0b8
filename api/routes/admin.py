"""Operations that change the server's state."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request

from api.schemas import ReloadOut, error_responses
from api.state import ServerState, require_api_key

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_api_key)])


@router.post(
    "/reload",
    response_model=ReloadOut,
    responses=error_responses(401),
    summary="Check the registry aliases now and swap models if they moved (refused versions are tried again)",
)
async def reload(request: Request) -> ReloadOut:
    """Every served model is checked (an unloaded one stays unloaded); the answer's top fields are
    the default model's."""
    served: dict[str, ServerState] = request.app.state.models
    results = await asyncio.gather(*(s.manager.refresh(retry_refused=True) for s in served.values()))
    default = next(iter(served.values())).manager
    champion, challenger = default.champion, default.challenger
    return ReloadOut(
        changed=results[0].changed,
        detail=results[0].detail,
        champion_version=None if champion is None else champion.version,
        challenger_version=None if challenger is None else challenger.version,
        models={name: result.detail for name, result in zip(served, results, strict=True)},
    )
