"""Request bodies streamed to ``<home>/uploads``: documents to ingest, archives to restore.

Chunk by chunk, so a multi-gigabyte body never sits in memory; bounded by
DAPSEARCH_MAX_UPLOAD_BYTES (413) and by the disk's reserve (507); written aside and renamed, so
a body cut off leaves nothing behind; fsynced, because the job that reads it outlives the process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

import anyio
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from core.disk import MIB, require_space
from service.errors import APIError
from service.settings import Settings

SPACE_CHECK_BYTES = 8 * MIB  # an upload of unknown length checks the disk's reserve this often
Body = TypeVar("Body", bound=BaseModel)


async def receive_upload(request: Request, settings: Settings, file_name: str, empty: str) -> Path:
    """Stream the body to ``<home>/uploads/<file_name>``; ``empty`` is the 400 for an empty body."""
    limit = settings.max_upload_bytes
    too_large = APIError(413, f"upload exceeds {limit} bytes (DAPSEARCH_MAX_UPLOAD_BYTES)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    reserve = settings.min_free_bytes
    require_space(settings.home, reserve, "store this upload", int(declared) if declared.isdigit() else 0)
    uploads = settings.uploads_dir
    await anyio.Path(uploads).mkdir(parents=True, exist_ok=True)
    part = uploads / f".{file_name}.part"
    final = uploads / file_name
    size = 0
    try:
        async with await anyio.open_file(part, "wb") as fh:
            async for chunk in request.stream():
                if not chunk:
                    continue
                size += len(chunk)
                if size > limit:
                    raise too_large
                if size // SPACE_CHECK_BYTES != (size - len(chunk)) // SPACE_CHECK_BYTES:
                    require_space(uploads, reserve, "store the rest of this upload")
                await fh.write(chunk)
            await fh.flush()
            await anyio.to_thread.run_sync(os.fsync, fh.wrapped.fileno())
        if size == 0:
            raise APIError(400, empty)
        await anyio.to_thread.run_sync(os.replace, part, final)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return final


async def json_body(request: Request, settings: Settings, model: type[Body]) -> Body:
    """A JSON body read by hand (a route that also takes uploads cannot declare it): bounded by
    DAPSEARCH_MAX_BODY_BYTES, and invalid fields answered as any declared body's are (422)."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > settings.max_body_bytes:
            raise APIError(413, f"request body exceeds {settings.max_body_bytes} bytes")
    try:
        return model.model_validate_json(bytes(raw))
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc
