"""The browser playground and console, served at `/` on the main port (static files in
the package: no build step)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from gateway.runtime import get_runtime

STATIC = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(tags=["ui"])

# no framing (clickjacking of the console's buttons), no sniffing, no referrer
_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def page_headers(request: Request, management_port: int) -> dict[str, str]:
    """The page's security headers: a strict CSP that lets it reach only this server's
    ports (the console calls the management port)."""
    host = request.url.hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    management = f"{request.url.scheme}://{host}:{management_port}"
    csp = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self' {management}; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    return {**_HEADERS, "Content-Security-Policy": csp, "Cache-Control": "no-cache"}


@router.get("/", include_in_schema=False)
async def index(request: Request) -> FileResponse:
    """The playground page."""
    settings = get_runtime(request).settings
    return FileResponse(STATIC / "index.html", headers=page_headers(request, settings.effective_management_port))


class UIFiles(StaticFiles):
    """The page's scripts and styles, with the same no-sniff and no-framing headers."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a file with the security headers."""

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    *((k.lower().encode(), v.encode()) for k, v in _HEADERS.items()),
                ]
            await send(message)

        await super().__call__(scope, receive, with_headers)


def install(app: FastAPI) -> None:
    """Serve the page's files under /ui (a mount, which a router cannot hold)."""
    app.mount("/ui", UIFiles(directory=STATIC), name="ui")
