"""Files of the Files API on a directory, and the checks of a batch input file.

A file's bytes are at `<directory>/<tenant digest>/<file id>` (the tenant's name never
becomes a path); its metadata is a document of the batch store. Uploads are written to a
temporary name and renamed, so a crash never leaves half a file under a file's id.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import BadRequest

# what a batch line may ask for: the endpoint, and the wire family that answers it
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")


def new_id(prefix: str) -> str:
    """A random id in OpenAI's style (`file-...`, `batch_...`)."""
    return prefix + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One request of a batch input file."""

    number: int  # 1-based, as errors name it
    custom_id: str
    url: str
    body: dict[str, Any]


def parse_batch_file(data: bytes, max_lines: int) -> list[BatchLine]:
    """The lines of a batch input file, or a 400 naming the first bad line: JSON objects
    with a unique `custom_id`, `method` POST, a supported `url` and an object `body`."""
    lines: list[BatchLine] = []
    seen: set[str] = set()
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        if len(lines) >= max_lines:
            raise BadRequest(f"the file has more than {max_lines} requests", param="file")
        where = f"line {number}"
        try:
            item = json.loads(raw)
        except ValueError as exc:
            raise BadRequest(f"{where} is not JSON: {exc}", param="file") from None
        if not isinstance(item, dict):
            raise BadRequest(f"{where} is not a JSON object", param="file")
        custom_id, method, url, body = item.get("custom_id"), item.get("method"), item.get("url"), item.get("body")
        if not isinstance(custom_id, str) or not custom_id or len(custom_id) > 512:
            raise BadRequest(f"{where}: custom_id must be a string of 1 to 512 characters", param="file")
        if custom_id in seen:
            raise BadRequest(f"{where}: custom_id {custom_id!r} repeats an earlier line's", param="file")
        if method != "POST":
            raise BadRequest(f"{where}: method must be POST", param="file")
        if url not in ENDPOINTS:
            raise BadRequest(f"{where}: url must be one of {', '.join(ENDPOINTS)}", param="file")
        if not isinstance(body, dict):
            raise BadRequest(f"{where}: body must be a JSON object", param="file")
        if body.get("stream"):
            raise BadRequest(f"{where}: a batch request cannot stream (body.stream)", param="file")
        seen.add(custom_id)
        lines.append(BatchLine(number, custom_id, url, body))
    if not lines:
        raise BadRequest("the file has no requests", param="file")
    return lines


class FileDirectory:
    """The files' bytes on a directory (shared by replicas when it is a shared volume)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def check(self) -> None:
        """Refuse to start if the directory cannot be written (fail closed, never later)."""
        self.root.mkdir(parents=True, exist_ok=True)
        probe = self.root / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()

    def path(self, tenant: str, file_id: str) -> Path:
        """Where a file of `tenant` is kept."""
        digest = hashlib.sha256(tenant.encode()).hexdigest()[:24]
        return self.root / digest / file_id

    def write(self, tenant: str, file_id: str, data: bytes) -> None:
        """Store a file's bytes (whole or not at all)."""
        target = self.path(tenant, file_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        partial.write_bytes(data)
        os.replace(partial, target)

    def read(self, tenant: str, file_id: str) -> bytes | None:
        """A file's bytes, or None if they are gone."""
        try:
            return self.path(tenant, file_id).read_bytes()
        except FileNotFoundError:
            return None

    def remove(self, tenant: str, file_id: str) -> None:
        """Delete a file's bytes (gone already is fine)."""
        self.path(tenant, file_id).unlink(missing_ok=True)


def file_object(
    file_id: str, filename: str, purpose: str, size: int, created_at: int, expires_at: int | None
) -> dict[str, Any]:
    """A file's metadata in OpenAI's shape."""
    return {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": created_at,
        "expires_at": expires_at,
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "status_details": None,
        "_order": time.time_ns() // 1000,  # the listing order (created_at has whole seconds)
    }
