"""Attachment bytes on local disk, named by a hash of their reference.

Files are written to a temporary name and renamed, so a crash never leaves a half file under the
final name; writes run in a worker thread so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path


class FileAttachmentStore:
    """adapters.base.AttachmentStore under `root` (created on first write)."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def _path(self, ref: str) -> Path:
        digest = hashlib.sha256(ref.encode("utf-8")).hexdigest()
        return self._root / digest[:2] / digest

    async def save(self, ref: str, data: bytes) -> Path:
        """Store `data` for `ref` (replacing an earlier copy) and return its path."""
        path = self._path(ref)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)

        await asyncio.to_thread(write)
        return path

    async def find(self, ref: str) -> Path | None:
        """The stored file for `ref`, if any."""
        path = self._path(ref)
        return path if await asyncio.to_thread(path.is_file) else None
