"""The filtered catalog (proxy.upstream.catalog): paging over a fake registry, bounded work,
no loops, sealed positions that neither leak nor can be forged, and what is kept between
requests: the registry's names (read once, briefly, dropped by a push of a new repository) and
each viewer's visible names. Pure: `fetch` and `allow` are
functions of the test."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.http.routes import CATALOG_MAX, Refusal
from proxy.upstream.catalog import (
    LISTED_PAGES,
    LISTING_MAX,
    LISTING_TTL,
    MAX_PAGES,
    READ_SHARE,
    SEALED,
    Filtering,
    Listing,
    Listings,
    Names,
    Visibility,
    filtered,
    next_link,
    page_of,
    parse_page,
    read_whole,
    seal,
    unseal,
)

KEY = secrets.token_bytes(32)


class Registry:
    """Pages of `size` names after `last`, like distribution, counting the pages served."""

    def __init__(
        self, names: list[str], size: int = CATALOG_MAX, endless: bool = False,
        clock: Clock | None = None, page_seconds: float = 0.0,
    ) -> None:  # fmt: skip
        self.names = sorted(names)
        self.size = size
        self.endless = endless
        self.pages = 0
        self.clock, self.page_seconds = clock, page_seconds  # how long a page takes to list

    async def fetch(self, after: str) -> tuple[list[str], bool]:
        self.pages += 1
        if self.clock is not None:
            self.clock.now += self.page_seconds
        rest = [n for n in self.names if n > after]
        page = rest[: self.size]
        return page, self.endless or len(rest) > self.size


def allowing(predicate: object) -> object:
    async def allow(names: list[str]) -> list[bool]:
        return [bool(predicate(n)) for n in names]  # type: ignore[operator]

    return allow


async def test_pages_fill_up_to_n_allowed_names() -> None:
    registry = Registry([f"r{i:04d}" for i in range(50)], size=7)
    listing = await filtered(registry.fetch, allowing(lambda n: int(n[1:]) % 3 == 0), 5, "")
    assert listing == Listing(["r0000", "r0003", "r0006", "r0009", "r0012"], "r0012")
    rest = await filtered(registry.fetch, allowing(lambda n: int(n[1:]) % 3 == 0), 100, "r0012")
    assert rest.repositories[0] == "r0015" and rest.resume_after is None


async def test_the_last_allowed_name_at_the_very_end_has_no_next_page() -> None:
    registry = Registry(["a", "b", "c"])
    assert await filtered(registry.fetch, allowing(lambda n: True), 3, "") == Listing(
        ["a", "b", "c"], None
    )


async def test_work_per_request_is_bounded_and_continues_where_it_stopped() -> None:
    names = [f"n{i:06d}" for i in range(CATALOG_MAX * (MAX_PAGES + 2))]
    registry = Registry(names)
    listing = await filtered(registry.fetch, allowing(lambda n: n == names[-1]), 10, "")
    assert registry.pages == MAX_PAGES
    assert listing.repositories == [] and listing.resume_after == names[MAX_PAGES * CATALOG_MAX - 1]
    again = await filtered(
        registry.fetch, allowing(lambda n: n == names[-1]), 10, listing.resume_after
    )
    assert again == Listing([names[-1]], None)


async def test_an_upstream_that_never_ends_or_repeats_itself_cannot_loop() -> None:
    registry = Registry(["a", "b"], endless=True)  # says "more" forever, same page again
    listing = await filtered(registry.fetch, allowing(lambda n: True), 100, "")
    assert listing == Listing(["a", "b"], None)
    assert registry.pages == 2  # the second page brought nothing new: the end


async def test_duplicates_and_disorder_are_dropped() -> None:
    async def fetch(after: str) -> tuple[list[str], bool]:
        return (["b", "a", "b", "c", "c", "d"], False) if not after else ([], False)

    listing = await filtered(fetch, allowing(lambda n: True), 100, "")
    assert listing.repositories == ["b", "c", "d"]


def test_a_position_the_caller_may_not_see_is_sealed() -> None:
    link = next_link(Listing(["pub/a"], "secret/merger"), 10, KEY)
    assert link is not None and "secret" not in link
    token = link.split("last=")[1].split("&")[0]
    assert token.startswith(SEALED)
    assert parse_page(f"last={token}&n=10", KEY) == (10, "secret/merger")
    assert next_link(Listing(["pub/a"], "pub/a"), 10, KEY) == (
        '</v2/_catalog?last=pub/a&n=10>; rel="next"'
    )
    assert next_link(Listing(["pub/a"], None), 10, KEY) is None


@pytest.mark.parametrize(
    "token",
    [
        SEALED,
        SEALED + "aaaa",
        seal("secret/x", secrets.token_bytes(32)),  # sealed by another process tree
        seal("secret/x", KEY)[:-2],  # tampered
    ],
    ids=["marker-only", "not-base32", "another-key", "tampered"],  # stable under xdist
)
def test_sealed_positions_cannot_be_forged(token: str) -> None:
    assert unseal(token, KEY) is None
    result = parse_page(f"last={token}", KEY)
    assert isinstance(result, Refusal) and result.code == "PAGINATION_NUMBER_INVALID"


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/._-", min_size=1, max_size=60))
def test_seal_round_trips_every_valid_name(name: str) -> None:
    from proxy.http.routes import valid_name

    assert unseal(seal(name, KEY), KEY) == (name if valid_name(name) else None)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", (100, "")),
        ("n=10", (10, "")),
        ("n=1", (1, "")),
        ("n=1000", (1000, "")),
        ("last=a/b", (100, "a/b")),
        ("n=5&last=library%2Fubuntu", (5, "library/ubuntu")),
        ("last=", (100, "")),
    ],
)
def test_parse_page(query: str, expected: tuple[int, str]) -> None:
    assert parse_page(query, KEY) == expected


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("n=0", "PAGINATION_NUMBER_INVALID"),
        ("n=1001", "PAGINATION_NUMBER_INVALID"),
        ("n=-1", "PAGINATION_NUMBER_INVALID"),
        ("n=", "PAGINATION_NUMBER_INVALID"),
        ("n=abc", "PAGINATION_NUMBER_INVALID"),
        ("n=1e3", "PAGINATION_NUMBER_INVALID"),
        ("n=+5", "PAGINATION_NUMBER_INVALID"),
        ("n=%C2%B2", "PAGINATION_NUMBER_INVALID"),  # superscript two: isdigit(), not int()
        ("n=%D9%A3", "PAGINATION_NUMBER_INVALID"),  # Arabic-Indic three
        ("n=%EF%BC%91%EF%BC%90", "PAGINATION_NUMBER_INVALID"),  # fullwidth "10"
        ("last=Bad", "NAME_INVALID"),
        ("last=a/../b", "NAME_INVALID"),
    ],
)
def test_parse_page_refusals(query: str, code: str) -> None:
    result = parse_page(query, KEY)
    assert isinstance(result, Refusal)
    assert (result.status, result.code) == (400, code)


# --------------------------------------------------------------------------------------------
# What is kept between requests: listings and visibility
# --------------------------------------------------------------------------------------------

NAMES = st.lists(
    st.text("abc/", min_size=1, max_size=4).filter(lambda n: not n.startswith("/")), max_size=40
).map(lambda names: sorted(set(names)))


@given(NAMES, st.sets(st.integers(0, 39)), st.integers(1, 7))
def test_walking_the_pages_of_a_visibility_lists_every_visible_name_once(
    names: list[str], shown: set[int], n: int
) -> None:
    visible = bytes(i in shown for i in range(len(names)))
    pages, last = [], ""
    while True:
        listing = page_of(names, visible, n, last)
        pages.append(listing.repositories)
        if listing.resume_after is None:
            break
        assert listing.resume_after == listing.repositories[-1]  # a name the caller sees
        last = listing.resume_after
    assert [name for page in pages for name in page] == [
        n for i, n in enumerate(names) if visible[i]
    ]
    assert all(len(page) == n for page in pages[:-1]) and len(pages[-1]) <= n


async def test_a_listing_is_read_whole_and_stops_at_what_it_holds() -> None:
    names = [f"team{i:05d}/app" for i in range(2_500)]
    registry = Registry(names)
    assert await read_whole(registry.fetch) == names
    assert registry.pages == 3
    endless = Registry(names, size=10, endless=True)
    assert await read_whole(endless.fetch) is None
    assert endless.pages == LISTED_PAGES


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def until_read(registry: Registry, pages: int) -> None:
    while registry.pages < pages:
        await asyncio.sleep(0)
    await asyncio.sleep(0)  # and its answer kept


async def test_concurrent_catalogs_read_the_registry_once_and_reuse_it_briefly() -> None:
    clock, registry = Clock(), Registry(["a/x", "b/y"])
    listings = Listings(clock)
    first, second = await asyncio.gather(
        listings.names("up", registry.fetch), listings.names("up", registry.fetch)
    )
    assert first is second and first.names == ["a/x", "b/y"] and registry.pages == 1
    clock.now += LISTING_TTL / 2
    assert await listings.names("up", registry.fetch) is first and registry.pages == 1
    clock.now += LISTING_TTL
    assert await listings.names("up", registry.fetch) is first  # read again, meanwhile
    await until_read(registry, 2)
    assert await listings.names("up", registry.fetch) is first  # unchanged: still decided
    registry.names.append("c/z")
    listings.drop("up", "a/x")  # a push to a repository it holds: still current
    assert await listings.names("up", registry.fetch) is first
    listings.drop("up", "c/z")  # a new repository: read again at once
    assert (await listings.names("up", registry.fetch)).names == ["a/x", "b/y", "c/z"]


async def test_each_viewer_is_decided_once_per_listing() -> None:
    listings, visibility = Listings(Clock()), Visibility(Filtering())
    names = await listings.names("up", Registry([f"n{i:03d}" for i in range(120)]).fetch)
    assert names.names is not None
    asked: list[str] = []

    def even(name: str) -> bool:
        asked.append(name)
        return int(name[1:]) % 2 == 0

    one, two = await asyncio.gather(visibility.visible("devs", names, even),
                                    visibility.visible("devs", names, even))  # fmt: skip
    assert one is two and len(asked) == 120
    assert [n for n, yes in zip(names.names, one, strict=True) if yes] == [
        f"n{i:03d}" for i in range(0, 120, 2)
    ]
    assert await visibility.visible("devs", names, even) is one and len(asked) == 120
    await visibility.visible("ops", names, even)
    assert len(asked) == 240  # another viewer
    visibility.clear()  # a reload
    await visibility.visible("devs", names, even)
    assert len(asked) == 360


async def test_a_registry_slow_to_list_is_listed_a_tenth_of_the_time_at_most() -> None:
    clock = Clock()
    registry = Registry([f"n{i:04d}" for i in range(2500)], clock=clock, page_seconds=1.0)
    listings = Listings(clock)
    first = await listings.names("up", registry.fetch)  # 3 pages: 3 s of the registry's time
    assert registry.pages == 3 and clock.now == 3.0
    clock.now += READ_SHARE * 3.0 - 1.0  # past LISTING_TTL, within ten reads' time
    assert await listings.names("up", registry.fetch) is first
    await asyncio.sleep(0)  # a read started in the background would have run by now
    await asyncio.sleep(0)
    assert registry.pages == 3
    clock.now += 1.0
    assert await listings.names("up", registry.fetch) is first  # read again, meanwhile
    await until_read(registry, 6)


class Gated:
    """The registry's pages as they stand when asked, handed over once `gate` opens (a slow
    listing, during which pushes land)."""

    def __init__(self, registry: Registry) -> None:
        self.registry, self.gate = registry, asyncio.Event()
        self.running = self.most = 0  # fetches under way: now, and at most

    async def fetch(self, after: str) -> tuple[list[str], bool]:
        self.running += 1
        self.most = max(self.most, self.running)
        page = await self.registry.fetch(after)
        await self.gate.wait()
        self.running -= 1
        return page


async def pushed_during_a_read() -> tuple[Registry, Gated, Listings, asyncio.Future[Names]]:
    """A request whose read (of "a/x") is held at its gate while "b/y" is pushed."""
    registry = Registry(["a/x"])
    slow, listings = Gated(registry), Listings(Clock())
    before = asyncio.ensure_future(listings.names("up", slow.fetch))
    await until_read(registry, 1)
    registry.names.append("b/y")  # pushed through the proxy meanwhile
    listings.drop("up", "b/y")
    return registry, slow, listings, before


async def test_a_push_during_a_read_is_listed_by_the_requests_after_it() -> None:
    """A read under way when a new repository is pushed may predate the push: it answers the
    requests that came before the push; those after it get the next read, one at a time."""
    registry, slow, listings, before = await pushed_during_a_read()
    after = asyncio.ensure_future(listings.names("up", slow.fetch))
    slow.gate.set()
    assert (await before).names == ["a/x"]
    assert (await after).names == ["a/x", "b/y"] and registry.pages == 2
    assert slow.most == 1  # one read at a time: the second began after the first
    assert await listings.names("up", slow.fetch) is await after  # kept: the second read


async def test_a_request_as_a_read_older_than_a_push_ends_gets_the_next_read() -> None:
    _, slow, listings, before = await pushed_during_a_read()
    slow.gate.set()
    await asyncio.sleep(0)  # the read has ended, and is let go at the next turn of the loop
    assert (await listings.names("up", slow.fetch)).names == ["a/x", "b/y"]
    assert (await before).names == ["a/x"]


async def test_pushes_to_repositories_a_read_lists_cost_no_other_read() -> None:
    registry = Registry(["a/x", "b/y"])
    slow, listings = Gated(registry), Listings(Clock())
    first = asyncio.ensure_future(listings.names("up", slow.fetch))
    await until_read(registry, 1)
    for _ in range(3):  # pushes to a repository the registry had (a tag, a platform, an index)
        listings.drop("up", "b/y")
    later = asyncio.ensure_future(listings.names("up", slow.fetch))
    slow.gate.set()
    assert await later is await first and registry.pages == 1
    assert await listings.names("up", registry.fetch) is await first  # and it was kept


async def test_a_listing_is_kept_five_minutes_at_most() -> None:
    clock = Clock()
    registry = Registry(["a/x"], clock=clock, page_seconds=LISTING_MAX / READ_SHARE * 2)
    listings = Listings(clock)
    first = await listings.names("up", registry.fetch)
    clock.now += LISTING_MAX - 1
    assert await listings.names("up", registry.fetch) is first
    await asyncio.sleep(0)
    assert registry.pages == 1
    clock.now += 1
    assert await listings.names("up", registry.fetch) is first  # read again, meanwhile
    await asyncio.sleep(0)
    assert registry.pages == 2


async def test_a_failed_read_is_tried_again_no_sooner_than_a_good_one() -> None:
    clock = Clock()
    registry = Registry(["a/x"], clock=clock, page_seconds=0.1)
    listings = Listings(clock)
    first = await listings.names("up", registry.fetch)  # 0.1 s: used for LISTING_TTL (5 s)
    clock.now += LISTING_TTL

    async def failing(_after: str) -> tuple[list[str], bool]:
        clock.now += 1.0
        raise RuntimeError("the registry timed out listing")

    assert await listings.names("up", failing) is first  # read again, in the background
    await asyncio.sleep(0)  # it ran (it never waits) and failed, taking 1 s: 10 s before another
    await asyncio.sleep(0)  # and it is no longer under way
    clock.now += READ_SHARE * 1.0 - 0.5
    assert await listings.names("up", registry.fetch) is first
    await asyncio.sleep(0)  # a read started in the background would have run by now
    assert registry.pages == 1
