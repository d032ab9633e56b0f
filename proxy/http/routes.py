"""A registry request classified into (endpoint, repository, action) by the OCI distribution
spec's endpoints, on the raw path the proxy forwards unchanged. Pure.

Names, tags and digests must match the spec's grammar, so percent-encoding, dot segments and
`;` parameters are refused before any decision, with the error code the spec gives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote_plus

from .headers import RawHeaders, Reading, Unreadable
from .headers import read as read_headers

Action = Literal["pull", "push", "delete"]
Kind = Literal["ping", "catalog", "manifest", "blob", "upload-start", "upload", "tags", "referrers"]
ACTIONS: tuple[Action, ...] = ("pull", "push", "delete")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
COMPONENT_RE = re.compile(_COMPONENT)
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
NAME_MAX = 255  # distribution's limit on a repository name
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
# Algorithms the registry (go-digest) knows, with the only encoding it accepts for each.
_ENCODED = {
    "sha256": re.compile(r"[a-f0-9]{64}"),
    "sha384": re.compile(r"[a-f0-9]{96}"),
    "sha512": re.compile(r"[a-f0-9]{128}"),
}
_UPLOAD_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]{0,255}")

# Endpoint shapes, by what ends the path: (kind, the text before the reference, whether a
# reference follows), in the order the registry's router tries them. The name before is
# validated separately so that a bad name gets NAME_INVALID; a reference is the last segment.
_ENDPOINTS: tuple[tuple[Kind, str, bool], ...] = (
    ("manifest", "/manifests", True),
    ("upload-start", "/blobs/uploads/", False),
    ("upload", "/blobs/uploads", True),
    ("blob", "/blobs", True),
    ("tags", "/tags/list", False),
    ("referrers", "/referrers", True),
)

# (kind, method) -> action. A pair not listed is refused with 405 and never forwarded.
_ACTIONS: dict[tuple[Kind, str], Action | None] = {
    ("ping", "GET"): None,
    ("ping", "HEAD"): None,
    ("catalog", "GET"): None,  # listed repositories are filtered by pull, one by one
    ("manifest", "GET"): "pull",
    ("manifest", "HEAD"): "pull",
    ("manifest", "PUT"): "push",
    ("manifest", "DELETE"): "delete",
    ("blob", "GET"): "pull",
    ("blob", "HEAD"): "pull",
    ("blob", "DELETE"): "delete",
    ("upload-start", "POST"): "push",
    ("upload", "GET"): "push",
    ("upload", "PATCH"): "push",
    ("upload", "PUT"): "push",
    ("upload", "DELETE"): "push",  # cancelling one's own upload is part of pushing
    ("tags", "GET"): "pull",
    ("referrers", "GET"): "pull",
}

# A reference outside its grammar: what the registry answers for a path outside its routes
# (404), in the spec's words; the referrers API must answer 400 to "a <digest> with an invalid
# syntax".
_NOT_A_REFERENCE: dict[Kind, tuple[int, str, str]] = {
    "manifest": (404, "MANIFEST_UNKNOWN", "manifest unknown: neither a tag nor a digest"),
    "blob": (404, "BLOB_UNKNOWN", "blob unknown: not a digest"),
    "upload": (404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown: not an upload id"),
    "referrers": (400, "DIGEST_INVALID", "invalid digest"),
}


@dataclass(frozen=True)
class Operation:
    """What a request does: the endpoint kind, the repository and the action it needs."""

    kind: Kind
    action: Action | None
    repository: str | None = None
    reference: str | None = None
    mount_from: str | None = None  # the repository a cross-repository mount reads from
    drop_mount: bool = False  # mount parameters without a usable source: removed

    @property
    def tag(self) -> str | None:
        """The tag of a manifest request by tag; None for a digest and for every other kind."""
        ref = self.reference
        if self.kind != "manifest" or ref is None or TAG_RE.fullmatch(ref) is None:
            return None
        return ref


@dataclass(frozen=True)
class Refusal:
    """A request that must not be forwarded, with its distribution-spec error."""

    status: int
    code: str
    message: str
    allow: str = ""  # the endpoint's methods, for the `Allow` header of a 405


def is_proxied(path: str) -> bool:
    """Only `/v2` and `/v2/...` go upstream (unlike Apache's `ProxyPass /v2`, not `/v2foo`)."""
    return path == "/v2" or path.startswith("/v2/")


def valid_name(name: str) -> bool:
    return len(name) <= NAME_MAX and NAME_RE.fullmatch(name) is not None


def valid_component(name: str) -> bool:
    """One path component of a repository name: what a `${user}` or `${group}` may stand for."""
    return len(name) <= NAME_MAX and COMPONENT_RE.fullmatch(name) is not None


def valid_reference(kind: Kind, ref: str) -> bool:
    """Whether `ref` is in the grammar of the path's reference (the registry's routes)."""
    if kind == "manifest":
        return TAG_RE.fullmatch(ref) is not None or DIGEST_RE.fullmatch(ref) is not None
    if kind == "upload":
        return _UPLOAD_ID_RE.fullmatch(ref) is not None
    return DIGEST_RE.fullmatch(ref) is not None


def malformed_digest(ref: str) -> bool:
    """A sha256 digest that is not 64 lower-case hex digits (the registry fails on these,
    for manifests with a 500); other algorithms are left to the registry."""
    algorithm, colon, encoded = ref.partition(":")
    pattern = _ENCODED.get(algorithm)
    return bool(colon) and pattern is not None and pattern.fullmatch(encoded) is None


def _reference_refusal(kind: Kind, ref: str) -> Refusal | None:
    if not valid_reference(kind, ref):
        return Refusal(*_NOT_A_REFERENCE[kind])
    if kind != "upload" and malformed_digest(ref):
        return Refusal(400, "DIGEST_INVALID", "invalid digest: wrong encoding for its algorithm")
    return None


def _endpoint(path: str) -> tuple[Kind, str | None, str | None] | Refusal:
    if path in ("/v2", "/v2/"):
        return ("ping", None, None)
    if path == "/v2/_catalog":
        return ("catalog", None, None)
    if not path.startswith("/v2/"):
        return Refusal(404, "UNSUPPORTED", "no such registry endpoint")
    rest, _, last = path.rpartition("/")
    for kind, suffix, has_ref in _ENDPOINTS:
        before, ref = (rest, last) if has_ref else (path, None)
        if not before.endswith(suffix) or len(before) <= len("/v2/") + len(suffix):
            continue
        name = before[len("/v2/") : -len(suffix)]
        if not valid_name(name):
            return Refusal(400, "NAME_INVALID", "invalid repository name")
        refused = None if ref is None else _reference_refusal(kind, ref)
        return refused or (kind, name, ref)
    return Refusal(404, "UNSUPPORTED", "no such registry endpoint")


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def query_pairs(query: str) -> list[tuple[str, str]] | None:
    """The query's (key, value) pairs as Go's url.ParseQuery (the registry's FormValue)
    reads them; None where Go reports an error and skips a pair Python would keep."""
    pairs = []
    for pair in query.split("&"):
        if ";" in pair or _BAD_ESCAPE.search(pair):
            return None
        if pair:
            key, _, value = pair.partition("=")
            pairs.append((unquote_plus(key), unquote_plus(value)))
    return pairs


def _mount_source(query: str) -> str | Refusal | None:
    """The `from` repository of a cross-repository mount, checked like any other name; ""
    when the mount has no usable source (it is then forwarded as an ordinary upload)."""
    # The spec lets a registry search for the blob itself when `from` is missing: forwarded
    # as an upload, no registry picks a source the caller may not read.
    pairs = query_pairs(query)
    if pairs is None:
        return Refusal(400, "UNSUPPORTED", "query string the registry would read differently")
    keys = [k for k, _ in pairs]
    for key in ("mount", "from", "digest"):
        if keys.count(key) > 1:
            return Refusal(400, "UNSUPPORTED", f"repeated query parameter {key!r}")
    params = dict(pairs)
    if "mount" not in params:
        return None
    digest, source = params["mount"], params.get("from", "")
    if DIGEST_RE.fullmatch(digest) is None or malformed_digest(digest) or not valid_name(source):
        return ""
    return source


def without_mount(query: str) -> str:
    """The query minus `mount` and `from`, the rest in its exact encoding."""
    kept = [
        pair
        for pair in query.split("&")
        if pair and unquote_plus(pair.partition("=")[0]) not in ("mount", "from")
    ]
    return "&".join(kept)


CATALOG_MAX = 1000  # the registry refuses larger pages


def body_refusal(operation: Operation, reading: Reading, query: str) -> Refusal | None:
    """Why a body could carry what the classifier never saw, if it could."""
    # The registry reads `mount`, `from` and `digest` with Go's FormValue, which prefers a form
    # body (urlencoded for POST, PUT, PATCH; multipart for any method) over the query: form
    # types are refused on every request. An upload start without `digest=` has no body at
    # all (docker, podman, skopeo, containerd and ORAS send Content-Length: 0).
    if reading.form:
        assert reading.media_type is not None
        return Refusal(400, "UNSUPPORTED", f"{reading.media_type.type} bodies are not accepted")
    if operation.kind == "upload-start" and reading.body:
        pairs = query_pairs(query) or []
        if not any(key == "digest" and value for key, value in pairs):  # FormValue != ""
            return Refusal(400, "UNSUPPORTED", "an upload start without digest= has no body")
    return None


def _tag_parameters(kind: Kind, method: str, query: str) -> Refusal | None:
    """A manifest PUT with `tag` query parameters, refused: it would set tags the tag rules
    never saw (each tag is pushed by its own reference instead)."""
    if kind != "manifest" or method != "PUT" or not query:
        return None
    pairs = query_pairs(query)
    if pairs is None:
        return Refusal(400, "UNSUPPORTED", "query string the registry would read differently")
    if any(key == "tag" for key, _ in pairs):
        return Refusal(400, "UNSUPPORTED", "tag query parameters are not accepted: push each tag")
    return None


def classify(method: str, path: str, query: str = "") -> Operation | Refusal:
    """Classify a request by its method and raw (undecoded) path and query string."""
    if not is_proxied(path):
        return Refusal(404, "UNSUPPORTED", "not a registry path")
    endpoint = _endpoint(path)
    if isinstance(endpoint, Refusal):
        return endpoint
    kind, name, ref = endpoint
    if (kind, method) not in _ACTIONS:
        allow = ", ".join(sorted(m for k, m in _ACTIONS if k == kind))
        return Refusal(405, "UNSUPPORTED", f"method {method} not allowed here", allow)
    refused = _tag_parameters(kind, method, query)
    if refused is not None:
        return refused
    source = _mount_source(query) if kind == "upload-start" else None
    if isinstance(source, Refusal):
        return source
    return Operation(kind, _ACTIONS[(kind, method)], name, ref, source or None, source == "")


def classify_request(
    method: str, path: str, query: str, headers: RawHeaders, http11: bool = True
) -> Operation | Refusal:
    """The classify step: headers as the registry reads them, endpoint and action, body check."""
    reading = read_headers(headers, http11)
    if isinstance(reading, Unreadable):
        return Refusal(reading.status, "UNSUPPORTED", reading.message)
    operation = classify(method, path, query)
    if isinstance(operation, Refusal):
        return operation
    return body_refusal(operation, reading, query) or operation
