"""HTTP helpers shared by adapters."""

from __future__ import annotations

import aiohttp


async def read_bounded(stream: aiohttp.StreamReader, limit: int) -> tuple[bytes, bool]:
    """Read at most `limit + 1` bytes; return (data, too_large). Never buffers an unbounded body."""
    chunks: list[bytes] = []
    total = 0
    while total <= limit:
        chunk = await stream.read(limit + 1 - total)
        if not chunk:
            return b"".join(chunks), False
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks), True
