"""The management API on port 3001 (Takeoff's port + 1), as the Takeoff client calls it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from gateway.protocols.management import CreateReaderRequest
from gateway.runtime import get_runtime
from gateway.serving import management, status, usage_api

router = APIRouter(tags=["management"])


@router.get("/reader_groups")
async def reader_groups(request: Request) -> dict[str, list[dict[str, Any]]]:
    """Consumer groups and their readers."""
    return status.reader_groups(get_runtime(request).registry)


@router.post("/reader", status_code=201)
async def create_reader(body: CreateReaderRequest, request: Request, wait: bool = True) -> dict[str, Any]:
    """Load a new reader while the gateway keeps serving; it joins its group when ready.

    By default the answer comes when the reader is ready (201) or has failed to load
    (422 with the reason; the reader stays listed as failed until deleted). With
    `?wait=false` the answer is immediate and the reader's state says "loading".
    """
    rt = get_runtime(request)
    return await management.create_reader(rt.registry, body, rt.settings, wait)


@router.delete("/reader/{reader_id}")
async def delete_reader(
    reader_id: str, request: Request, drain_seconds: Annotated[float | None, Query(ge=0)] = None
) -> dict[str, Any]:
    """Stop routing to the reader, drain its requests (`drain_seconds`, at most the server's
    drain timeout), end the rest with an error, free its memory."""
    rt = get_runtime(request)
    return await management.delete_reader(rt.registry, reader_id, rt.settings, drain_seconds)


@router.get("/config/{reader_id}")
async def reader_config(reader_id: str, request: Request) -> dict[str, Any]:
    """The settings the reader runs with."""
    return management.reader_config(get_runtime(request).registry, reader_id)


@router.get("/usage", response_model=None)
async def usage(
    request: Request,
    since: Annotated[str | None, Query(alias="from", pattern=r"^\d{4}-\d{2}-\d{2}$")] = None,
    until: Annotated[str | None, Query(alias="to", pattern=r"^\d{4}-\d{2}-\d{2}$")] = None,
    tenant: str | None = None,
    key: str | None = None,
    group: str | None = None,
    model: str | None = None,
    api: str | None = None,
    group_by: str = "day,tenant,model",
    format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
) -> Response:
    """The usage ledger's totals: per UTC day from `from` to `to` (default: today), for the
    records matching the filters, one row per distinct `group_by` value (any of day,
    tenant, key, group, model, api); `format=csv` for a spreadsheet."""
    given = (("tenant", tenant), ("key", key), ("group", group), ("model", model), ("api", api))
    filters = {k: v for k, v in given if v is not None}
    return await usage_api.usage(get_runtime(request), since, until, filters, group_by, format)
