"""Reading a whole HTTP body within a bound, as the proxy's own requests and checks need it."""

from __future__ import annotations

from aiohttp import StreamReader


class TooLarge(ValueError):
    """A body over the bound it was read with."""


async def read_whole(content: StreamReader, limit: int) -> bytes:
    """Every byte of the body (not only what has arrived so far), or TooLarge past `limit`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await content.read(limit + 1 - size)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"body larger than {limit} bytes")
        chunks.append(chunk)
