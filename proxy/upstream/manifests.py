"""What manifests hold, read from their bytes with the proxy's own requests to the registry:
shared by the guards that look into manifests (immutable tags, protected deletes, quarantine).

A manifest's contents (the manifests an index lists, the blobs an image lists) are read from its
bytes, whatever its descriptor or media type says, and remembered by digest (content-addressed:
never stale) in one bounded LRU per worker. Looking into nested indexes is bounded: MAX_NESTED
manifests under one, MAX_FETCHES fetched for one check.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from ..core.limits import Timeouts
from ..core.lru import LRU
from ..http.routes import DIGEST_RE, TAG_RE
from .client import Registry, UpstreamError
from .forward import Route

MAX_MANIFEST = 4 * 1024 * 1024  # distribution refuses larger manifests
MAX_TAG_PAGES = 20  # tag list pages read before a delete by digest
MAX_TAG_LIST = 8 * 1024 * 1024  # bytes of one tag list page
MAX_NESTED = 256  # manifests looked into under one manifest (its own included); more: refused
MAX_FETCHES = 1024  # manifests fetched for one check (the others were read before); more: refused
CONTENTS = 16_384  # manifests whose contents a worker remembers, by digest
INDEX_TYPES = frozenset(
    {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
)
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    *sorted(INDEX_TYPES),
    "application/vnd.oci.artifact.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v1+json",
)
ACCEPT = ", ".join(MANIFEST_TYPES)
HASHES = ("sha256", "sha384", "sha512")


class Unavailable(Exception):
    """The registry did not answer a check: the request is refused, never let through."""


class TooMuch(Exception):
    """A check would look into more manifests than it may: the request is refused."""


@dataclass(frozen=True)
class Contents:
    """What one manifest's bytes list: the manifests (an index's `manifests`) and the blobs
    (an image's `config` and `layers`, a schema 1 manifest's `fsLayers`)."""

    manifests: frozenset[str] = frozenset()
    blobs: frozenset[str] = frozenset()


NOTHING = Contents()


def new_contents() -> LRU[str, Contents]:
    """The contents a worker remembers, by digest (one LRU for every guard that looks)."""
    return LRU(CONTENTS)


def digest_of(body: bytes, algorithm: str = "sha256") -> str:
    """The digest of `body` with `algorithm` (one of HASHES)."""
    return f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"


def usable_digest(value: str) -> bool:
    """A digest the proxy can check bytes against."""
    return DIGEST_RE.fullmatch(value) is not None and value.partition(":")[0] in HASHES


@dataclass
class Asker:
    """The proxy's own requests to the registry for one check."""

    registry: Registry
    route: Route
    host: str | None  # the Host to send (None: the registry's own, for the CLI)
    timeouts: Timeouts
    contents_by_digest: LRU[str, Contents]
    fetched: int = 0

    @contextlib.asynccontextmanager
    async def _request(self, method: str, path: str) -> AsyncIterator[aiohttp.ClientResponse]:
        try:
            async with self.registry.request(
                method,
                self.route.upstream + path,
                timeouts=self.timeouts,
                host=self.host,
                forwarded_for=self.route.forwarded_for or None,
                accept=ACCEPT,
            ) as response:
                yield response
        except UpstreamError as exc:
            raise Unavailable(str(exc)) from None

    async def _body(self, response: aiohttp.ClientResponse, limit: int) -> bytes:
        try:
            return await self.registry.body(response, limit)
        except UpstreamError as exc:
            raise Unavailable(str(exc)) from None

    async def current(self, repository: str, tag: str) -> str | None:
        """The digest of what `tag` names now, or None when it does not exist."""
        path = f"/v2/{repository}/manifests/{tag}"
        async with self._request("HEAD", path) as response:
            if response.status == 404:
                return None
            _expect_ok(response, path)
            digest = response.headers.get("Docker-Content-Digest", "")
        if usable_digest(digest):
            return digest
        async with self._request("GET", path) as response:  # no usable digest: hash the body
            if response.status == 404:
                return None
            _expect_ok(response, path)
            body = await self._body(response, MAX_MANIFEST)
            return digest_of(body)

    async def has(self, repository: str, digest: str) -> bool:
        """Whether `repository` has the manifest `digest`."""
        path = f"/v2/{repository}/manifests/{digest}"
        async with self._request("HEAD", path) as response:
            if response.status == 404:
                return False
            _expect_ok(response, path)
            return True

    async def held(self, repository: str, digest: str) -> frozenset[str] | None:
        """The digests of every manifest the manifest `digest` holds, through the indexes
        nested in it (deleting a manifest two levels down breaks the tag's image as surely as
        one level down). Each one is looked into, whatever its descriptor says it is: what it
        holds is read from its bytes. None: more than MAX_NESTED to look into."""
        nested = await self.nested(repository, digest)
        if nested is None:
            return None
        return frozenset(child for contents in nested.values() for child in contents.manifests)

    async def nested(self, repository: str, digest: str) -> dict[str, Contents] | None:
        """The manifest `digest` and every manifest nested in it, each with its contents (a
        manifest absent from the repository holds nothing); None: more than MAX_NESTED."""
        seen: dict[str, Contents] = {}
        pending, queued = [digest], {digest}
        for _ in range(MAX_NESTED):
            if not pending:
                return seen
            current = pending.pop()
            contents = seen[current] = await self.contents(repository, current) or NOTHING
            for child in contents.manifests - queued:
                queued.add(child)
                pending.append(child)
        return None if pending else seen

    async def blobs(self, repository: str, digest: str) -> frozenset[str] | None:
        """The blobs the manifest `digest` lists, with those of every manifest nested in it
        (an index's images); None when the repository does not have it (nor was it read
        before: its contents are the same wherever it is)."""
        if await self.contents(repository, digest) is None:
            return None
        nested = await self.nested(repository, digest)
        if nested is None:
            raise TooMuch(f"{digest} nests over {MAX_NESTED} manifests to look into")
        return frozenset(blob for contents in nested.values() for blob in contents.blobs)

    async def contents(self, repository: str, digest: str) -> Contents | None:
        """What the manifest `digest` lists, read from its bytes (remembered); None when the
        repository does not have it."""
        known = self.contents_by_digest.get(digest)
        if known is not None:
            return known
        self.fetched += 1
        if self.fetched > MAX_FETCHES:
            raise TooMuch(f"over {MAX_FETCHES} manifests to look into in {repository}")
        path = f"/v2/{repository}/manifests/{digest}"
        async with self._request("GET", path) as response:
            if response.status == 404:
                return None
            _expect_ok(response, path)
            body = await self._body(response, MAX_MANIFEST)
        if not usable_digest(digest) or digest_of(body, digest.partition(":")[0]) != digest:
            raise Unavailable(f"{path}: the registry answered other bytes")
        return self.remember(digest, body)

    def remember(self, digest: str, body: bytes) -> Contents:
        """Remember what `body`, whose digest the caller checked, lists."""
        contents = contents_of(body)
        self.contents_by_digest.put(digest, contents)
        return contents

    async def tags(self, repository: str) -> list[str]:
        """Every tag of `repository`, following the registry's pages (bounded)."""
        found: list[str] = []
        path: str | None = f"/v2/{repository}/tags/list"
        for _ in range(MAX_TAG_PAGES):
            if path is None:
                return found
            async with self._request("GET", path) as response:
                if response.status == 404:
                    return found  # no such repository: nothing is tagged
                _expect_ok(response, path)
                found.extend(_tag_page(await self._body(response, MAX_TAG_LIST), path))
                path = _next_page(response, repository)
        if path is not None:
            raise Unavailable(f"more than {MAX_TAG_PAGES} pages of tags in {repository}")
        return found


def contents_of(body: bytes) -> Contents:
    """What a manifest's bytes list, whatever its media type says: an index's `manifests`, an
    image's `config` and `layers` (a schema 1 manifest's `fsLayers`). Only digests are kept:
    never a path of our own requests."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return NOTHING
    if not isinstance(document, dict):
        return NOTHING
    blobs = [document.get("config"), *_listed(document, "layers"), *_listed(document, "blobs")]
    blobs += [{"digest": layer.get("blobSum")} for layer in _listed(document, "fsLayers")]
    return Contents(_digests(_listed(document, "manifests")), _digests(blobs))


def _listed(document: dict[str, object], key: str) -> list[dict[str, object]]:
    entries = document.get(key)
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def _digests(entries: Sequence[object]) -> frozenset[str]:
    return frozenset(
        digest
        for entry in entries
        if isinstance(entry, dict)
        and isinstance(digest := entry.get("digest"), str)
        and DIGEST_RE.fullmatch(digest)
    )


def _expect_ok(response: aiohttp.ClientResponse, path: str) -> None:
    if response.status != 200:
        raise Unavailable(f"{response.method} {path}: HTTP {response.status}")


def _tag_page(body: bytes, path: str) -> list[str]:
    try:
        tags = json.loads(body).get("tags") or []
    except (ValueError, AttributeError):
        raise Unavailable(f"{path}: not a tag list") from None
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise Unavailable(f"{path}: not a tag list")
    if not all(TAG_RE.fullmatch(t) for t in tags):  # never a path of our own requests
        raise Unavailable(f"{path}: a tag outside the tag grammar")
    return tags


def _next_page(response: aiohttp.ClientResponse, repository: str) -> str | None:
    """The next page's path and query from `Link: <...>; rel="next"`, only within this
    repository's tag list."""
    link = response.links.get("next")
    if link is None:
        return None
    target = urlsplit(str(link.get("url", "")))
    if target.path != f"/v2/{repository}/tags/list":
        raise Unavailable(f"tag list of {repository}: unexpected next page {target.path!r}")
    return f"{target.path}?{target.query}" if target.query else target.path
