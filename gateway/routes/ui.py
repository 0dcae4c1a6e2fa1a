"""The browser playground and console, served at `/` on the main port (static files in
the package: no build step)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(tags=["ui"])


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    """The playground page."""
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
