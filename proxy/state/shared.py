"""A hash every replica shares through Redis (`PREFIX shared:NAME`), read whole by each worker:
what an operator's command writes once and every replica must apply within a second (the
quarantine list).

No round trip on the hot path: once first asked, a worker polls the hash's version key every
POLL seconds and reads the hash again when it changes (writers INCR it after each change, in
the same transaction). While Redis cannot be reached, the last hash read stays in force: an
outage never lifts what was shared, and a change made meanwhile applies when it answers again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import cast

from redis.asyncio import Redis

from ..core.chores import every, stop
from .redis_layout import Keys
from .redis_store import DOWN

log = logging.getLogger("regproxy.store")

POLL = 0.25  # seconds between reads of the version key


class SharedMap:
    """One worker's copy of a shared hash: `fields` as last read, `generation` bumped at each
    change."""

    def __init__(self, client: Redis, keys: Keys, name: str) -> None:
        self._client = client
        self._key, self._version_key = keys.shared(name), keys.shared_version(name)
        self._name = name
        self.fields: Mapping[bytes, bytes] = {}
        self.generation = 0
        self._version: bytes | None = None
        self._read_once = False
        self._down_logged = False
        self._first: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None

    async def current(self) -> Mapping[bytes, bytes]:
        """The hash as last read; the first call starts polling and waits for one read."""
        if self._first is None:
            self._first = asyncio.ensure_future(self._check())
            self._poller = asyncio.ensure_future(every(POLL, self._check))
        if not self._first.done():
            await asyncio.shield(self._first)
        return self.fields

    async def _check(self) -> None:
        try:
            version = cast(bytes | None, await self._client.get(self._version_key))
            if version == self._version and self._read_once:
                return
            fields = cast(dict[bytes, bytes], await self._client.hgetall(self._key))
        except DOWN as exc:
            if not self._down_logged:
                log.warning("shared %s: Redis unreachable, the last copy read stays: %s",
                            self._name, exc)  # fmt: skip
                self._down_logged = True
            return
        self._down_logged = False
        self._version, self._read_once = version, True
        if fields != self.fields:
            self.fields = fields
            self.generation += 1

    async def close(self) -> None:
        await stop(self._poller, self._first)
