"""The prediction page: a static form that builds itself from the served model's features."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

router = APIRouter()


@cache
def _page() -> str:
    return files("api").joinpath("static", "index.html").read_text(encoding="utf-8")


@cache
def _icon() -> bytes:
    return files("api").joinpath("static", "favicon.svg").read_bytes()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    return HTMLResponse(_page(), headers={"Cache-Control": "no-cache"})


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> Response:
    """The page's icon, at the path browsers ask for even without a link to it."""
    return Response(_icon(), media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})
