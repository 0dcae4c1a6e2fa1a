"""OpenAI's Files and Batch APIs (translation in `gateway.serving.batches_api`), on the main
port and the OpenAI port when `batches.enabled`."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from gateway.protocols.batches import CreateBatchRequest
from gateway.runtime import get_runtime
from gateway.serving import batches_api

router = APIRouter(prefix="/v1", tags=["batches"])


@router.post("/files", response_model=None)
async def upload_file(request: Request) -> Response:
    """Upload a file (multipart: `file`, `purpose` batch or user_data)."""
    return await batches_api.upload(get_runtime(request), request)


@router.get("/files", response_model=None)
async def list_files(
    request: Request, purpose: str | None = None, after: str | None = None, limit: int = Query(20)
) -> Response:
    """The caller's files, newest first."""
    return await batches_api.list_files(get_runtime(request), request, purpose, after, limit)


@router.get("/files/{file_id}", response_model=None)
async def get_file(file_id: str, request: Request) -> Response:
    """A file's metadata."""
    return await batches_api.get_file(get_runtime(request), request, file_id)


@router.get("/files/{file_id}/content", response_model=None)
async def file_content(file_id: str, request: Request) -> Response:
    """A file's bytes."""
    return await batches_api.file_content(get_runtime(request), request, file_id)


@router.delete("/files/{file_id}", response_model=None)
async def delete_file(file_id: str, request: Request) -> Response:
    """Delete a file."""
    return await batches_api.delete_file(get_runtime(request), request, file_id)


@router.post("/batches", response_model=None)
async def create_batch(body: CreateBatchRequest, request: Request) -> Response:
    """Start a batch over an uploaded file."""
    return await batches_api.create_batch(get_runtime(request), request, body)


@router.get("/batches", response_model=None)
async def list_batches(request: Request, after: str | None = None, limit: int = Query(20)) -> Response:
    """The caller's batches, newest first."""
    return await batches_api.list_batches(get_runtime(request), request, after, limit)


@router.get("/batches/{batch_id}", response_model=None)
async def get_batch(batch_id: str, request: Request) -> Response:
    """A batch's status and counts."""
    return await batches_api.get_batch(get_runtime(request), request, batch_id)


@router.post("/batches/{batch_id}/cancel", response_model=None)
async def cancel_batch(batch_id: str, request: Request) -> Response:
    """Cancel a batch."""
    return await batches_api.cancel_batch(get_runtime(request), request, batch_id)
