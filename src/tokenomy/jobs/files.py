"""Files of the Batch API: kept on disk under ``jobs.files_dir``, described in the ``files`` table.

Content is always streamed: an upload is copied to disk chunk by chunk, a
download is sent chunk by chunk, and batch inputs are read line by line, so a
file of any size costs a few buffers of memory. With several hosts, point
``files_dir`` at shared storage.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

from tokenomy.errors import NotFound
from tokenomy.jobs.store import JobStore

CHUNK = 1 << 16


def new_file_id() -> str:
    return "file-" + uuid.uuid4().hex[:24]


def file_object(record: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``file`` object."""
    return {
        "id": record["id"],
        "object": "file",
        "bytes": record["bytes"],
        "created_at": int(record["created_at"]),
        "filename": record["filename"],
        "purpose": record["purpose"],
        "status": record["status"],
        "expires_at": None,
        "status_details": None,
    }


class FileStore:
    def __init__(self, directory: str | Path, store: JobStore) -> None:
        self.directory = Path(directory)
        self.store = store

    def path_for(self, file_id: str) -> Path:
        return self.directory / f"{file_id}.jsonl"

    async def save_upload(
        self, source: IO[bytes], filename: str, purpose: str, max_bytes: int, *, owner: str | None = None
    ) -> dict[str, Any]:
        """Copy an uploaded (spooled) file into the store; raises ``ValueError`` beyond ``max_bytes``.

        ``owner``: the virtual key uploading it (see ``jobs.owner``).
        """
        file_id = new_file_id()
        path = self.path_for(file_id)
        size = await asyncio.to_thread(_copy, source, path, max_bytes)
        record = {
            "id": file_id,
            "filename": filename,
            "purpose": purpose,
            "bytes": size,
            "created_at": time.time(),
            "path": str(path),
            "status": "processed",
            "owner": owner,
        }
        await self.store.create_file(record)
        return record

    async def register(
        self, file_id: str, path: Path, filename: str, purpose: str, *, owner: str | None = None
    ) -> dict[str, Any]:
        """Describe a file the gateway wrote itself (batch output and error files, owned by the batch's owner)."""
        record = {
            "id": file_id,
            "filename": filename,
            "purpose": purpose,
            "bytes": path.stat().st_size,
            "created_at": time.time(),
            "path": str(path),
            "status": "processed",
            "owner": owner,
        }
        await self.store.create_file(record)
        return record

    async def get(self, file_id: str) -> dict[str, Any]:
        record = await self.store.get_file(file_id)
        if record is None:
            raise NotFound(f"No such File object: {file_id}", param="file_id")
        return record

    async def stream(self, file_id: str) -> AsyncIterator[bytes]:
        return self.content(await self.get(file_id))

    def content(self, record: dict[str, Any]) -> AsyncIterator[bytes]:
        """The bytes of a file found with ``get``, streamed."""
        return _chunks(Path(record["path"]))

    async def delete(self, file_id: str) -> None:
        await self.remove(await self.get(file_id))

    async def remove(self, record: dict[str, Any]) -> None:
        """Delete a file found with ``get``: its row, then its bytes."""
        await self.store.delete_file(record["id"])
        try:
            os.unlink(record["path"])
        except FileNotFoundError:
            pass


def _copy(source: IO[bytes], path: Path, max_bytes: int) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    source.seek(0)
    with open(path, "wb") as out:
        while chunk := source.read(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                out.close()
                path.unlink(missing_ok=True)
                raise ValueError(f"the file is larger than the limit of {max_bytes} bytes")
            out.write(chunk)
    return size


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, CHUNK * 4):
            yield chunk
    finally:
        handle.close()
