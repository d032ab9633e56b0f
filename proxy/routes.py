"""Classification of a registry request into (repository, action), following the OCI
distribution spec's endpoints. Pure: no I/O.

The classifier works on the raw, undecoded path, and the proxy forwards exactly that path, so
the check and the upstream can never disagree about which repository a request touches. Names,
tags and digests must match the spec's grammar; percent-encoding, dot segments, empty segments
and `;` parameters therefore never match and are refused before any decision.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, unquote_plus

Action = Literal["pull", "push", "delete"]
Kind = Literal["ping", "catalog", "manifest", "blob", "upload-start", "upload", "tags", "referrers"]
ACTIONS: tuple[Action, ...] = ("pull", "push", "delete")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
NAME_MAX = 255  # distribution's limit on a repository name
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_UPLOAD_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]{0,255}")

# Endpoint shapes: the name part is validated separately so that a bad name gets NAME_INVALID.
_ENDPOINTS: tuple[tuple[Kind, re.Pattern[str]], ...] = (
    ("manifest", re.compile(r"/v2/(?P<name>.+)/manifests/(?P<ref>[^/]*)")),
    ("upload-start", re.compile(r"/v2/(?P<name>.+)/blobs/uploads/")),
    ("upload", re.compile(r"/v2/(?P<name>.+)/blobs/uploads/(?P<ref>[^/]*)")),
    ("blob", re.compile(r"/v2/(?P<name>.+)/blobs/(?P<ref>[^/]*)")),
    ("tags", re.compile(r"/v2/(?P<name>.+)/tags/list")),
    ("referrers", re.compile(r"/v2/(?P<name>.+)/referrers/(?P<ref>[^/]*)")),
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


@dataclass(frozen=True)
class Operation:
    """What a request does: the endpoint kind, the repository and the action it needs.

    `mount_from` is the second repository a cross-repository blob mount reads from.
    """

    kind: Kind
    action: Action | None
    repository: str | None = None
    reference: str | None = None
    mount_from: str | None = None


@dataclass(frozen=True)
class Refusal:
    """A request that must not be forwarded, with its distribution-spec error."""

    status: int
    code: str
    message: str


def is_proxied(path: str) -> bool:
    """Only `/v2` and `/v2/...` go upstream (unlike Apache's `ProxyPass /v2`, not `/v2foo`)."""
    return path == "/v2" or path.startswith("/v2/")


def valid_name(name: str) -> bool:
    return len(name) <= NAME_MAX and NAME_RE.fullmatch(name) is not None


def valid_reference(kind: Kind, ref: str) -> bool:
    if kind == "manifest":
        return TAG_RE.fullmatch(ref) is not None or DIGEST_RE.fullmatch(ref) is not None
    if kind == "upload":
        return _UPLOAD_ID_RE.fullmatch(ref) is not None
    return DIGEST_RE.fullmatch(ref) is not None


def _endpoint(path: str) -> tuple[Kind, str | None, str | None] | Refusal:
    if path in ("/v2", "/v2/"):
        return ("ping", None, None)
    if path == "/v2/_catalog":
        return ("catalog", None, None)
    for kind, pattern in _ENDPOINTS:
        match = pattern.fullmatch(path)
        if match is None:
            continue
        name, ref = match.group("name"), match.groupdict().get("ref")
        if not valid_name(name):
            return Refusal(400, "NAME_INVALID", "invalid repository name")
        if ref is not None and not valid_reference(kind, ref):
            code = "TAG_INVALID" if kind == "manifest" else "DIGEST_INVALID"
            return Refusal(400, code, f"invalid reference in {kind} path")
        return (kind, name, ref)
    return Refusal(404, "NOT_FOUND", "no such registry endpoint")


def _mount_source(query: str) -> str | Refusal | None:
    """The `from` repository of a cross-repository mount, checked like any other name.

    Repeated parameters are refused: the registry might read a different copy than we did.
    """
    pairs = parse_qsl(query, keep_blank_values=True)
    keys = [k for k, _ in pairs]
    for key in ("mount", "from", "digest"):
        if keys.count(key) > 1:
            return Refusal(400, "UNSUPPORTED", f"repeated query parameter {key!r}")
    params = dict(pairs)
    if "mount" not in params:
        return None
    source = params.get("from", "")
    if not valid_name(source):
        return Refusal(400, "NAME_INVALID", "invalid repository name in 'from'")
    return source


def without_mount(query: str) -> str:
    """The query minus `mount` and `from`: the registry then starts an ordinary upload (the
    spec's fallback). Other parameters keep their exact encoding."""
    kept = [
        pair
        for pair in query.split("&")
        if pair and unquote_plus(pair.partition("=")[0]) not in ("mount", "from")
    ]
    return "&".join(kept)


CATALOG_MAX = 1000  # the registry refuses larger pages


_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def body_refusal(operation: Operation, content_type: str) -> Refusal | None:
    """Form bodies are refused on push requests: the registry reads `mount`, `from` and
    `digest` with Go's FormValue, which prefers a form body over the query string, so a form
    body could carry parameters this classifier never saw. No registry client sends one."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if operation.action == "push" and media_type in _FORM_TYPES:
        return Refusal(400, "UNSUPPORTED", f"{media_type} bodies are not accepted here")
    return None


def classify(method: str, path: str, query: str = "") -> Operation | Refusal:
    """Classify a request by its method and raw (undecoded) path and query string."""
    if not is_proxied(path):
        return Refusal(404, "NOT_FOUND", "not a registry path")
    endpoint = _endpoint(path)
    if isinstance(endpoint, Refusal):
        return endpoint
    kind, name, ref = endpoint
    if (kind, method) not in _ACTIONS:
        return Refusal(405, "UNSUPPORTED", f"method {method} not allowed here")
    mount_from: str | None = None
    if kind == "upload-start":
        source = _mount_source(query)
        if isinstance(source, Refusal):
            return source
        mount_from = source
    return Operation(kind, _ACTIONS[(kind, method)], name, ref, mount_from)
