"""What may be cached and for how long (proxy.cache): pure decisions and the LRU."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from proxy.guards.headcache import HeadCache, blob_key, cache_key, freshness
from proxy.http.routes import Operation

UP = "http://127.0.0.1:5000"
PATH = "/v2/app/blobs/sha256:" + "a" * 64
BLOB_PULL = Operation("blob", "pull", "app", "sha256:" + "a" * 64)
BLOB_DELETE = Operation("blob", "delete", "app", "sha256:" + "a" * 64)
MANIFEST = Operation("manifest", "pull", "app", "latest")


@pytest.mark.parametrize(
    ("method", "operation", "query", "headers", "expected"),
    [
        ("HEAD", BLOB_PULL, "", {}, UP + PATH),
        ("GET", BLOB_PULL, "", {}, None),  # bodies are streamed, never kept
        ("HEAD", MANIFEST, "", {}, None),  # tags move
        ("HEAD", BLOB_PULL, "x=1", {}, None),
        ("HEAD", BLOB_PULL, "", {"If-None-Match": '"x"'}, None),
        ("HEAD", BLOB_PULL, "", {"If-Modified-Since": "Mon"}, None),
        ("HEAD", BLOB_PULL, "", {"If-Match": "*"}, None),
        ("HEAD", BLOB_PULL, "", {"If-Unmodified-Since": "Mon"}, None),
        ("HEAD", BLOB_PULL, "", {"Range": "bytes=0-1"}, None),
        ("HEAD", BLOB_PULL, "", {"Accept": "*/*"}, UP + PATH),
        ("DELETE", BLOB_DELETE, "", {}, None),
    ],
)
def test_cache_key(
    method: str, operation: Operation, query: str, headers: dict[str, str], expected: str | None
) -> None:
    assert cache_key(method, operation, UP, PATH, query, CIMultiDict(headers)) == expected


def test_conditions_are_found_in_any_letter_case() -> None:
    headers = CIMultiDict({"if-none-match": '"x"'})
    assert cache_key("HEAD", BLOB_PULL, UP, PATH, "", headers) is None


def test_keys_differ_per_repository_and_upstream() -> None:
    other_repo = PATH.replace("/app/", "/other/")
    keys = {
        cache_key("HEAD", BLOB_PULL, up, path, "", CIMultiDict())
        for up in (UP, "http://127.0.0.1:5001")
        for path in (PATH, other_repo)
    }
    assert len(keys) == 4


def test_blob_delete_invalidates_its_own_key_only() -> None:
    assert blob_key(BLOB_DELETE, UP, PATH) == cache_key("HEAD", BLOB_PULL, UP, PATH, "", {})
    assert blob_key(BLOB_PULL, UP, PATH) is None
    assert blob_key(Operation("manifest", "delete", "app", "sha256:" + "a" * 64), UP, PATH) is None


@pytest.mark.parametrize(
    ("cache_control", "ttl", "expected"),
    [
        ("max-age=31536000", 10, 10),  # the registry's own header, capped by the ttl
        ("max-age=3", 10, 3),
        ("public, max-age=5", 10, 5),
        ("MAX-AGE=5", 10, 5),
        ('max-age="7"', 10, 7),
        ("max-age=60, s-maxage=2", 10, 2),  # a shared cache prefers s-maxage
        ("max-age=0", 10, 0),
        ("", 10, 0),
        ("public", 10, 0),
        ("max-age=60, no-store", 10, 0),
        ("no-cache, max-age=60", 10, 0),
        ("private, max-age=60", 10, 0),
        ("max-age=-5", 10, 0),
        ("max-age=1e3", 10, 0),
        ("max-age=", 10, 0),
        ("max-age=60", 0, 0),
        (",,max-age=4,,", 10, 4),
    ],
)
def test_freshness(cache_control: str, ttl: float, expected: float) -> None:
    assert freshness(cache_control, ttl) == expected


def headers(**extra: str) -> CIMultiDict[str]:
    base = {"Content-Length": "10", "Date": "Mon", "Age": "3", "Docker-Content-Digest": "d"}
    return CIMultiDict({**base, **extra})


def test_entries_expire_and_keep_neither_date_nor_age() -> None:
    cache = HeadCache()
    cache.put("k", headers(), 5, now=100)
    entry = cache.get("k", now=104.9)
    assert entry is not None and entry.stored == 100
    assert dict(entry.headers) == {"Content-Length": "10", "Docker-Content-Digest": "d"}
    assert cache.get("k", now=105) is None
    assert len(cache) == 0  # an expired entry is dropped when met


@pytest.mark.parametrize("extra", [{"Vary": "Accept"}, {"Location": "https://x/"}])
def test_answers_that_depend_on_more_than_the_path_are_not_kept(extra: dict[str, str]) -> None:
    cache = HeadCache()
    cache.put("k", headers(**extra), 5, now=0)
    assert cache.get("k", now=1) is None


def test_no_lifetime_no_entry_and_drop() -> None:
    cache = HeadCache()
    cache.put("k", headers(), 0, now=0)
    assert cache.get("k", now=0) is None
    cache.put("k", headers(), 5, now=0)
    cache.drop("k")
    cache.drop("absent")
    assert cache.get("k", now=0) is None


def test_bounded_least_recently_used_goes_first() -> None:
    cache = HeadCache(size=3)
    for key in "abc":
        cache.put(key, headers(), 5, now=0)
    assert cache.get("a", now=1) is not None  # a is now the most recent
    cache.put("d", headers(), 5, now=1)
    assert len(cache) == 3
    assert cache.get("b", now=1) is None
    assert all(cache.get(key, now=1) is not None for key in "acd")
