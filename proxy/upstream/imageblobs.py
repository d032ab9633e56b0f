"""The blobs a manifest lists, read from the registry for `regproxy quarantine add`: the config
and layers of an image, of every image of an index (nested indexes too, bounded as the guards
are: `proxy.upstream.manifests`), each manifest read from its bytes and checked against its
digest. The repository is the one named, else the first in the registry's catalog that has
the manifest."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass

from ..core.limits import Timeouts
from .catalog import fetch_page, read_whole
from .client import Registry, UpstreamError
from .forward import Route
from .manifests import Asker, TooMuch, Unavailable, new_contents

CONNECTIONS = 8  # repositories asked at once while searching the catalog


class Unreadable(Exception):
    """The registry could not tell what the manifest lists (said to the operator as it is)."""


@dataclass(frozen=True)
class Found:
    """Where the manifest was read, and the blobs it lists."""

    repository: str
    blobs: frozenset[str]


async def image_blobs(
    upstream: str, digest: str, repository: str | None, timeouts: Timeouts
) -> Found | None:
    """The blobs the manifest `digest` lists, read in `repository` (None: searched in the
    catalog); None when the registry answered that no repository searched has it."""
    try:
        async with Registry.own(CONNECTIONS, timeouts.keepalive) as registry:
            ask = Asker(registry, Route(upstream, "", ""), None, timeouts, new_contents())
            where = repository or await _holding(ask, registry, upstream, digest, timeouts)
            blobs = await ask.blobs(where, digest) if where is not None else None
    except (Unavailable, TooMuch, UpstreamError) as exc:
        raise Unreadable(str(exc)) from None
    return Found(where, blobs) if where is not None and blobs is not None else None


async def _holding(
    ask: Asker, registry: Registry, upstream: str, digest: str, timeouts: Timeouts
) -> str | None:
    """The first repository of the catalog that has the manifest `digest`."""
    fetch = functools.partial(fetch_page, registry, upstream, None, None, timeouts)
    names = await read_whole(fetch)
    if names is None:
        raise Unreadable("the catalog lists too many repositories to search: name one")
    for start in range(0, len(names), CONNECTIONS):
        batch = names[start : start + CONNECTIONS]
        held = await asyncio.gather(*(ask.has(name, digest) for name in batch))
        found = next((name for name, has in zip(batch, held, strict=True) if has), None)
        if found is not None:
            return found
    return None
