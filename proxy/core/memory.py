"""Handing freed heap pages back to the system (glibc's malloc_trim), once a second."""

# Each TLS connection reads into 256 KiB blocks (uvloop) that glibc serves from the heap once
# a large block has been freed; the pages they touched stay resident after the connection is
# gone, so without this a worker's RSS only ever grows.

from __future__ import annotations

import asyncio
import ctypes

TRIM_INTERVAL = 1.0


async def release_memory() -> None:
    """Trim forever (cancelled at shutdown)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    while True:
        await asyncio.sleep(TRIM_INTERVAL)
        trim(0)
