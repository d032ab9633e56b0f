"""`GET /v2/_catalog` filtered to what the caller may pull, with the registry's paging intact.

The registry's names are read whole (`Listings`: up to LISTED_PAGES pages, one read at a time
per upstream, kept LISTING_TTL seconds or READ_SHARE times as long as the read took, up to
LISTING_MAX, dropped at once when a push through any worker or replica adds a repository) and
which of them a caller may pull is decided once per viewer (`Visibility`: what the rules can tell
apart of a caller, so users of the same groups share one entry; a bounded LRU, emptied at a
reload): a page is then a binary search. Deciding runs a slice at a time with turns of the
event loop in between, so other requests wait for a few slices at most.

A registry with more names than a listing holds is paged as it goes: upstream pages are read
until `n` allowed names are found, but never more than `MAX_PAGES` per client request: a huge
registry where the caller sees little, or an upstream whose `Link` never ends, costs a bounded
amount of work. The answer then carries what was found and a `Link` to continue. Names must
come in strictly increasing order (the registry's own order); a repeated or out-of-order name
is dropped and a page that brings nothing new ends the listing, so no upstream can make the
proxy loop.

Continuing from a name the caller may not see would reveal it, so such a position travels
sealed (AES-GCM under a key of this process tree; `seal`/`unseal`): it is neither readable
nor forgeable, and a sealed position from elsewhere is refused (the client lists again).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import functools
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from ..core.flight import SingleFlight
from ..core.limits import Timeouts
from ..core.lru import LRU
from ..http import web
from ..http.errors import API_VERSION, API_VERSION_HEADER, SERVER, error_response
from ..http.routes import CATALOG_MAX, Refusal, valid_name
from .client import Registry, UpstreamError

log = logging.getLogger("regproxy")

MAX_PAGES = 10  # upstream pages (of CATALOG_MAX names) read per client request
SLICE = 50  # names decided between two turns of the event loop
FILTERING = 2  # catalog pages being filtered at once per worker (the others wait their turn)
SEALED = "~"  # marks a sealed position in `last` (never the start of a repository name)
LISTED_PAGES = 50  # upstream pages (of CATALOG_MAX names) a listing holds at most
LISTING_TTL = 5.0  # seconds a listing is used at least (pushes through the proxy drop it at once)
# ... and this many times as long as reading it took (a failed read of a kept listing too), up
# to LISTING_MAX: a registry slow to list (a walk of a large storage) spends at most about a
# tenth of its time listing for each worker, however many catalogs are asked for (plus one
# read per push of a new repository; one with more names than a listing holds is still paged
# by each request). What goes stale is only what changed behind the proxy's back: a deletion,
# a garbage collection, a push straight to the registry.
READ_SHARE = 10
LISTING_MAX = 300.0  # seconds: the time measured includes waits for an upstream connection
UPSTREAMS = 16  # listings kept (one per upstream)
VIEWERS = 256  # visibility entries kept (each a byte per name: 12.5 MiB at most)

Fetch = Callable[[str], Awaitable[tuple[list[str], bool]]]
Allow = Callable[[list[str]], Awaitable[list[bool]]]


@dataclass(frozen=True)
class Listing:
    """One page for the client, and where the next one starts (None: the end)."""

    repositories: list[str]
    resume_after: str | None


async def filtered(fetch: Fetch, allow: Allow, n: int, last: str) -> Listing:
    """Up to `n` allowed names after `last`: `fetch(after)` gives one upstream page and whether
    the registry has more; `allow(names)` says which of them the caller may see."""
    found: list[str] = []
    cursor = last
    for _ in range(MAX_PAGES):
        names, more = await fetch(cursor)
        fresh = _increasing(names, cursor)
        if not fresh:
            return Listing(found, None)
        for name, allowed in zip(fresh, await allow(fresh), strict=True):
            cursor = name
            if allowed:
                found.append(name)
                if len(found) == n:
                    done = not more and name == fresh[-1]
                    return Listing(found, None if done else name)
        if not more:
            return Listing(found, None)
    return Listing(found, cursor)


class Filtering:
    """Deciding which names a caller may see, without holding up other requests: a slice at a
    time with a turn of the event loop in between, and at most FILTERING pages at once, so a
    request waits for a few slices at most, however many pages, names and rules (fair to
    it, unlike a thread contending for the interpreter lock)."""

    def __init__(self) -> None:
        self._turns = asyncio.Semaphore(FILTERING)

    async def allowed(self, allowed: Callable[[str], bool], names: list[str]) -> list[bool]:
        answers: list[bool] = []
        async with self._turns:
            for start in range(0, len(names), SLICE):
                answers += [allowed(name) for name in names[start : start + SLICE]]
                await asyncio.sleep(0)
        return answers


def _increasing(names: list[str], after: str) -> list[str]:
    """The names that keep the listing strictly increasing after `after`."""
    kept: list[str] = []
    for name in names:
        if name > (kept[-1] if kept else after):
            kept.append(name)
    return kept


def parse_page(query: str, key: bytes) -> tuple[int, str] | Refusal:
    """`n` (default 100, as the registry) and `last` (a name, or a sealed position)."""
    params = dict(parse_qsl(query, keep_blank_values=True))
    last = params.get("last", "")
    if last.startswith(SEALED):
        opened = unseal(last, key)
        if opened is None:
            return Refusal(400, "PAGINATION_NUMBER_INVALID", "stale catalog position: list again")
        last = opened
    elif last and not valid_name(last):
        return Refusal(400, "NAME_INVALID", "invalid repository name in 'last'")
    text = params.get("n", "100")
    if (
        not text.isascii()
        or not text.isdigit()
        or len(text) > 4
        or not 0 < int(text) <= CATALOG_MAX
    ):
        return Refusal(400, "PAGINATION_NUMBER_INVALID", f"n must be 1 to {CATALOG_MAX}")
    return int(text), last


def next_link(listing: Listing, n: int, key: bytes) -> str | None:
    """The `Link` header to the next page, sealing a position the caller may not see."""
    if listing.resume_after is None:
        return None
    after = listing.resume_after
    if not listing.repositories or listing.repositories[-1] != after:
        after = seal(after, key)
    return f'</v2/_catalog?last={after}&n={n}>; rel="next"'


def seal(name: str, key: bytes) -> str:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # only when paging is cut

    nonce = secrets.token_bytes(12)
    sealed = nonce + AESGCM(key).encrypt(nonce, name.encode(), b"catalog")
    return SEALED + base64.b32encode(sealed).decode().rstrip("=").lower()


def unseal(token: str, key: bytes) -> str | None:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    text = token[len(SEALED) :].upper()
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
        name = AESGCM(key).decrypt(raw[:12], raw[12:], b"catalog").decode()
    except (binascii.Error, ValueError, InvalidTag, UnicodeDecodeError):
        return None
    return name if valid_name(name) else None


MAX_PAGE_BYTES = 4 * 1024 * 1024  # one upstream page of CATALOG_MAX names, with room to spare


async def fetch_page(
    registry: Registry,
    upstream: str,
    host: str | None,
    forwarded_for: str | None,
    timeouts: Timeouts,
    after: str,
) -> tuple[list[str], bool]:
    """One upstream page after `after`, and whether the registry says there is more. Built
    afresh: none of the client's headers (a Content-Length would stall it)."""
    query = f"n={CATALOG_MAX}" + (f"&last={after}" if after else "")
    url = f"{upstream}/v2/_catalog?{query}"
    async with registry.request(
        "GET", url, timeouts=timeouts, host=host, forwarded_for=forwarded_for
    ) as response:
        if response.status != 200:
            raise UpstreamError(f"GET {url}: status {response.status}")
        try:
            body = json.loads(await registry.body(response, MAX_PAGE_BYTES))
        except (ValueError, RecursionError):
            raise UpstreamError(f"GET {url}: not a catalog") from None
        names = body.get("repositories") if isinstance(body, dict) else None
        names = names or []
        if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
            raise UpstreamError(f"GET {url}: malformed catalog")
        return [x for x in names if valid_name(x)], "Link" in response.headers


async def read_whole(fetch: Fetch) -> list[str] | None:
    """Every name the registry lists, in order, or None when it lists more than a listing
    holds (or never ends)."""
    names: list[str] = []
    for _ in range(LISTED_PAGES):
        page, more = await fetch(names[-1] if names else "")
        fresh = _increasing(page, names[-1] if names else "")
        names += fresh
        if not more or not fresh:
            return names
    return None


@dataclass(frozen=True, eq=False)
class Names:
    """One upstream's repository names, strictly increasing (None: too many to hold)."""

    names: list[str] | None

    def holds(self, name: str) -> bool:
        if self.names is None:
            return True  # nothing to drop: each request pages the registry itself
        at = bisect.bisect_left(self.names, name)
        return at < len(self.names) and self.names[at] == name


class Listings:
    """The registry's repository names per upstream: read whole by one request at a time,
    then used while they are read again in the background, so only the first request waits
    for a slow listing; a push of a repository they lack drops them."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._kept: LRU[str, tuple[float, Names]] = LRU(UPSTREAMS)  # until when used, what
        self._reading: SingleFlight[str, Names] = SingleFlight()
        # The repositories pushed while a read was under way (until it is let go): it may have
        # listed the registry before them.
        self._during: dict[str, set[str]] = {}

    async def names(self, upstream: str, fetch: Fetch) -> Names:
        """Those kept, or else those of a read that began after every push (made before this
        request came) of a repository they lack: at most two reads, one after the other."""
        if self._kept.get(upstream) is None:
            pushed = set(self._during.get(upstream, ()))
            names = await self._listed(upstream, fetch)
            if all(names.holds(repository) for repository in pushed):
                return names
            await asyncio.sleep(0)  # the read that lacked them (not kept) is let go
        return await self._listed(upstream, fetch)

    async def _listed(self, upstream: str, fetch: Fetch) -> Names:
        kept = self._kept.get(upstream)
        if kept is None:
            return await asyncio.shield(self._read(upstream, fetch, None))
        if self._clock() >= kept[0]:
            self._read(upstream, fetch, kept[1])
        return kept[1]

    def _read(self, upstream: str, fetch: Fetch, last: Names | None) -> asyncio.Future[Names]:
        """The read under way, or one started now (`last`: the names in use meanwhile)."""
        if not self._reading.under_way(upstream):
            self._during[upstream] = set()
        during = self._during[upstream]
        read = functools.partial(self._names, upstream, fetch, last, during)
        ended = functools.partial(self._ended, upstream, during, last is not None)
        return self._reading.start(upstream, read, ended)

    async def _names(
        self, upstream: str, fetch: Fetch, last: Names | None, during: set[str]
    ) -> Names:
        began = self._clock()
        try:
            names = Names(await read_whole(fetch))
        except BaseException:
            if last is not None:  # a failed read is not tried again sooner than a good one
                self._keep(upstream, began, last, during)
            raise
        if last is not None and last.names == names.names:
            names = last  # unchanged: what was decided about it still holds
        self._keep(upstream, began, names, during)
        return names

    def _keep(self, upstream: str, began: float, names: Names, pushed: set[str]) -> None:
        """Use `names`, read since `began`, for as long as the read earns them, if they hold
        what was pushed meanwhile."""
        if all(names.holds(repository) for repository in pushed):
            now = self._clock()
            used = min(LISTING_MAX, max(LISTING_TTL, READ_SHARE * (now - began)))
            self._kept.put(upstream, (now + used, names))

    def _ended(
        self, upstream: str, during: set[str], background: bool, reading: asyncio.Future[Names]
    ) -> None:
        """A read is let go (right after SingleFlight forgets it); one in the background that
        failed is logged (the names in use stay; a request waiting for a read says why)."""
        if self._during.get(upstream) is during:
            del self._during[upstream]
        if background and not reading.cancelled() and reading.exception() is not None:
            log.warning("catalog: reading the registry's names failed: %s", reading.exception())

    def drop(self, upstream: str, repository: str) -> None:
        """A push made `repository`: names that lack it are used no more, nor kept if a read
        under way brings them."""
        kept = self._kept.get(upstream)
        if kept is not None and kept[1].holds(repository):
            return
        self._kept.pop(upstream)
        if upstream in self._during:
            self._during[upstream].add(repository)

    def clear(self) -> None:
        """At a reload (a read under way still keeps what it brings: names, not decisions)."""
        self._kept.clear()


Visible = bytes  # per name of a listing, 1 when the viewer may see it, else 0


class Visibility:
    """Which of a listing's names each viewer may see, decided once (a slice at a time, at
    most FILTERING listings at once) and kept in a bounded LRU; `clear` at a reload."""

    def __init__(self, filtering: Filtering) -> None:
        self._kept: LRU[Hashable, tuple[Names, Visible]] = LRU(VIEWERS)
        self._deciding: SingleFlight[tuple[Hashable, int], Visible] = SingleFlight()
        self._filtering = filtering

    async def visible(
        self, viewer: Hashable, names: Names, allowed: Callable[[str], bool]
    ) -> Visible:
        kept = self._kept.get(viewer)
        if kept is not None and kept[0] is names:
            return kept[1]

        async def decide() -> Visible:
            assert names.names is not None
            visible = bytes(await self._filtering.allowed(allowed, names.names))
            self._kept.put(viewer, (names, visible))
            return visible

        return await self._deciding.join((viewer, id(names)), decide)

    def clear(self) -> None:
        self._kept.clear()


def page_of(names: list[str], visible: Visible, n: int, last: str) -> Listing:
    """Up to `n` visible names after `last`, and where the next page starts."""
    found: list[str] = []
    at = visible.find(1, bisect.bisect_right(names, last))
    while at != -1 and len(found) < n:
        found.append(names[at])
        at = visible.find(1, at + 1)
    return Listing(found, found[-1] if at != -1 else None)


class Catalog:
    """`GET /v2/_catalog` for one worker: the registry's names, filtered to what the caller
    may pull."""

    def __init__(self, registry: Registry, key: bytes, listings: Listings) -> None:
        self._registry = registry
        self._key = key  # seals positions the caller may not see
        self._filtering = Filtering()
        self._listings = listings
        self._visibility = Visibility(self._filtering)
        self._rules: object = None  # the rules the kept visibility was decided by

    async def answer(
        self,
        query: str,
        may_pull: Callable[[str], bool],
        *,
        viewer: Hashable,
        rules: object,
        upstream: str,
        host: str,
        forwarded_for: str,
        timeouts: Timeouts,
    ) -> web.StreamResponse:
        """The page; `viewer`: what the `rules` (their snapshot's) can tell apart of the
        caller, with whatever else decides what they may pull (grants in force)."""
        page = parse_page(query, self._key)
        if isinstance(page, Refusal):
            return error_response(page.status, page.code, page.message)
        n, last = page
        if rules is not self._rules:  # a reload: what was decided may no longer hold
            self._rules = rules
            self._visibility.clear()
            self._listings.clear()
        fetch = functools.partial(
            fetch_page, self._registry, upstream, host, forwarded_for, timeouts
        )
        try:
            names = await self._listings.names(upstream, fetch)
            if names.names is None:
                allow = functools.partial(self._filtering.allowed, may_pull)
                listing = await filtered(fetch, allow, n, last)
            else:
                visible = await self._visibility.visible((viewer, upstream), names, may_pull)
                listing = page_of(names.names, visible, n, last)
        except UpstreamError as exc:
            log.warning("upstream %s catalog failed: %s", upstream, exc)
            if exc.timed_out:
                return error_response(504, "UNAVAILABLE", "upstream registry timed out")
            return error_response(502, "UNAVAILABLE", "upstream registry catalog failed")
        response = web.json_response({"repositories": listing.repositories})
        link = next_link(listing, n, self._key)
        if link is not None:
            response.headers["Link"] = link
        response.headers[API_VERSION_HEADER] = API_VERSION
        response.headers["Server"] = SERVER
        return response
