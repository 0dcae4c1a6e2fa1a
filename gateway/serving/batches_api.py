"""OpenAI's Files and Batch APIs (`/v1/files`, `/v1/batches`) in OpenAI's shapes; the work
is `gateway.batches.runner`'s. Files and batches belong to the caller's tenant: another
tenant's id is a 404, as an unknown one is."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import principal_of
from gateway.batches.files import ENDPOINTS, file_object, new_id, parse_batch_file
from gateway.batches.runner import TERMINAL, public
from gateway.errors import BadRequest, Conflict, NotFound, PayloadTooLarge, RateLimited
from gateway.machinery.bodies import FastJSONResponse
from gateway.protocols.batches import CreateBatchRequest
from gateway.runtime import Runtime

PURPOSES = ("batch", "user_data")
MAX_PAGE = 100


def _page(docs: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE}", param="limit")
    if after is not None:
        ids = [d["id"] for d in docs]
        if after not in ids:
            raise BadRequest("after names no object of this list", param="after")
        docs = docs[ids.index(after) + 1 :]
    page = [public(d) for d in docs[:limit]]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(docs) > limit,
    }


async def upload(runtime: Runtime, request: Request) -> Response:
    """`POST /v1/files` (multipart: `file`, `purpose`)."""
    conf = runtime.settings.batches
    tenant = principal_of(request.scope).tenant
    async with request.form(max_files=1, max_fields=8) as form:
        purpose = form.get("purpose")
        upload_file = form.get("file")
        if not isinstance(purpose, str) or purpose not in PURPOSES:
            raise BadRequest(f"purpose must be one of {', '.join(PURPOSES)}", param="purpose")
        if not isinstance(upload_file, UploadFile):
            raise BadRequest("a file part named `file` is required", param="file")
        data = await upload_file.read(conf.max_file_bytes + 1)
        filename = (upload_file.filename or "upload.jsonl")[:256]
    if len(data) > conf.max_file_bytes:
        raise PayloadTooLarge(f"a file may hold at most {conf.max_file_bytes} bytes", param="file")
    if purpose == "batch":
        await asyncio.to_thread(parse_batch_file, data, conf.max_lines)
    store = runtime.batch_store
    stored = sum(f["bytes"] for f in await store.listing("file", tenant))
    if stored + len(data) > conf.max_stored_bytes_per_tenant:
        raise RateLimited(
            f"the tenant stores {stored} bytes of files; with this one it would pass its "
            f"{conf.max_stored_bytes_per_tenant}: delete files first",
            param="file",
        )
    file_id = new_id("file-")
    now = int(time.time())
    doc = file_object(file_id, filename, purpose, len(data), now, now + conf.file_retention_days * 86400)
    await asyncio.to_thread(runtime.batch_files.write, tenant, file_id, data)
    await store.put("file", tenant, file_id, doc)
    return FastJSONResponse(public(doc))


async def _file(runtime: Runtime, request: Request, file_id: str) -> dict[str, Any]:
    found = await runtime.batch_store.get("file", principal_of(request.scope).tenant, file_id)
    if found is None:
        raise NotFound(f"no file {file_id!r}", param="file_id")
    return found


async def list_files(
    runtime: Runtime, request: Request, purpose: str | None, after: str | None, limit: int
) -> Response:
    """`GET /v1/files`."""
    docs = await runtime.batch_store.listing("file", principal_of(request.scope).tenant)
    if purpose is not None:
        docs = [d for d in docs if d["purpose"] == purpose]
    return FastJSONResponse(_page(docs, after, limit))


async def get_file(runtime: Runtime, request: Request, file_id: str) -> Response:
    """`GET /v1/files/{id}`."""
    return FastJSONResponse(public(await _file(runtime, request, file_id)))


async def file_content(runtime: Runtime, request: Request, file_id: str) -> Response:
    """`GET /v1/files/{id}/content`: the bytes as uploaded or written."""
    await _file(runtime, request, file_id)
    data = await asyncio.to_thread(runtime.batch_files.read, principal_of(request.scope).tenant, file_id)
    if data is None:
        raise NotFound(f"the content of file {file_id!r} is gone", param="file_id")
    return Response(data, media_type="application/octet-stream")


async def delete_file(runtime: Runtime, request: Request, file_id: str) -> Response:
    """`DELETE /v1/files/{id}` (refused while an unfinished batch reads it)."""
    tenant = principal_of(request.scope).tenant
    await _file(runtime, request, file_id)
    for batch in await runtime.batch_store.listing("batch", tenant):
        if batch["input_file_id"] == file_id and batch["status"] not in TERMINAL:
            raise Conflict(f"batch {batch['id']!r} is still reading this file", param="file_id")
    await asyncio.to_thread(runtime.batch_files.remove, tenant, file_id)
    await runtime.batch_store.delete("file", tenant, file_id)
    return FastJSONResponse({"id": file_id, "object": "file", "deleted": True})


async def create_batch(runtime: Runtime, request: Request, body: CreateBatchRequest) -> Response:
    """`POST /v1/batches`: validated and run by the batch runners."""
    conf = runtime.settings.batches
    principal = principal_of(request.scope)
    tenant = principal.tenant
    if body.endpoint not in ENDPOINTS:
        raise BadRequest(f"endpoint must be one of {', '.join(ENDPOINTS)}", param="endpoint")
    source = await runtime.batch_store.get("file", tenant, body.input_file_id)
    if source is None:
        raise NotFound(f"no file {body.input_file_id!r}", param="input_file_id")
    if source["purpose"] != "batch":
        raise BadRequest("the input file's purpose must be batch", param="input_file_id")
    store = runtime.batch_store
    active = [b for b in await store.listing("batch", tenant) if b["status"] not in TERMINAL]
    if len(active) >= conf.max_active_batches_per_tenant:
        raise RateLimited(
            f"the tenant has {len(active)} unfinished batches, its limit; wait for one to end",
            headers={"Retry-After": "60"},
        )
    now = int(time.time())
    batch_id = new_id("batch_")
    doc: dict[str, Any] = {
        "id": batch_id,
        "object": "batch",
        "endpoint": body.endpoint,
        "errors": None,
        "input_file_id": body.input_file_id,
        "completion_window": body.completion_window,
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": now,
        "in_progress_at": None,
        "expires_at": now + 24 * 3600,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": body.metadata,
        "_key": principal.name,
        "_order": time.time_ns() // 1000,  # the listing order (created_at has whole seconds)
    }
    await store.put("batch", tenant, batch_id, doc)
    await store.set_active(tenant, batch_id, True)
    return FastJSONResponse(public(doc))


async def _batch(runtime: Runtime, request: Request, batch_id: str) -> dict[str, Any]:
    found = await runtime.batch_store.get("batch", principal_of(request.scope).tenant, batch_id)
    if found is None:
        raise NotFound(f"no batch {batch_id!r}", param="batch_id")
    if found["status"] == "in_progress":  # the counts as of now, not as of the last round
        done, failed = await runtime.batch_store.counts(batch_id)
        found["request_counts"].update(completed=done - failed, failed=failed)
    return found


async def get_batch(runtime: Runtime, request: Request, batch_id: str) -> Response:
    """`GET /v1/batches/{id}`."""
    return FastJSONResponse(public(await _batch(runtime, request, batch_id)))


async def cancel_batch(runtime: Runtime, request: Request, batch_id: str) -> Response:
    """`POST /v1/batches/{id}/cancel`: lines in flight are stopped, the rest never run; the
    batch ends `cancelled` with the results so far."""
    tenant = principal_of(request.scope).tenant
    for _ in range(5):  # a runner may move the batch on between the read and the write
        doc = await _batch(runtime, request, batch_id)
        was = doc["status"]
        if was in ("cancelling", "cancelled"):
            return FastJSONResponse(public(doc))
        if was not in ("validating", "in_progress"):
            raise Conflict(f"the batch is {was} and cannot be cancelled", param="batch_id")
        doc.update(status="cancelling", cancelling_at=int(time.time()))
        if await runtime.batch_store.replace("batch", tenant, batch_id, doc, was):
            return FastJSONResponse(public(doc))
    raise Conflict("the batch changed while it was being cancelled; try again", param="batch_id")


async def list_batches(runtime: Runtime, request: Request, after: str | None, limit: int) -> Response:
    """`GET /v1/batches` (newest first, `after` a batch id)."""
    docs = await runtime.batch_store.listing("batch", principal_of(request.scope).tenant)
    page = _page(docs, after, limit)
    for doc in page["data"]:
        if doc["status"] == "in_progress":  # the counts as of now
            done, failed = await runtime.batch_store.counts(doc["id"])
            doc["request_counts"].update(completed=done - failed, failed=failed)
    return FastJSONResponse(page)
