"""Operations that change the server's state."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.schemas import ReloadOut, error_responses
from api.state import StateDep, require_api_key

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_api_key)])


@router.post(
    "/reload",
    response_model=ReloadOut,
    responses=error_responses(401),
    summary="Check the registry aliases now and swap models if they moved (refused versions are tried again)",
)
async def reload(state: StateDep) -> ReloadOut:
    result = await state.manager.refresh(retry_refused=True)
    champion, challenger = state.manager.champion, state.manager.challenger
    return ReloadOut(
        changed=result.changed,
        detail=result.detail,
        champion_version=None if champion is None else champion.version,
        challenger_version=None if challenger is None else challenger.version,
    )
