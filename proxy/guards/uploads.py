"""Blob uploads bound to whoever started them: the binding (pure) and its guard.

The registry hands out an upload's URL (its `Location`) to the client that started it and takes
any request to that URL from anyone allowed to push to the repository: another user with push
rights who learnt the URL could append to, finish or cancel someone else's upload. So the proxy
signs each upload `Location` it returns with a binding, HMAC-SHA256(key, repository, upload
id, user), carried as the query parameter `_regproxy`, and checks it on every request to the
upload (`GET`, `PATCH`, `PUT`, `DELETE`): another identity, or none, is refused with 403 before
anything is forwarded, and the parameter is removed before the registry sees the request.

The key is shared by every worker (worker 0 makes one at start) or, with `secret_file`
configured, derived from the server's secret, so that replicas behind one load balancer accept
each other's bindings and an upload survives a restart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from dataclasses import replace
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from ..http import web
from ..http.errors import error_response
from ..http.routes import Operation, Refusal, classify
from ..pipeline.context import RequestContext
from ..pipeline.guard import Guard
from ..upstream.forward import Answer

log = logging.getLogger("regproxy")

PARAM = "_regproxy"
NOT_YOURS = Refusal(403, "DENIED", "this upload was started by someone else")


def binding(key: bytes, repository: str, upload: str, user: str | None) -> str:
    message = "\0".join((repository, upload, user or "")).encode("utf-8", "surrogateescape")
    mac = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def _split(query: str) -> tuple[list[str], list[str]]:
    """(the query's other pairs as they were written, the binding values)."""
    kept, values = [], []
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if unquote_plus(name) == PARAM:
            values.append(value)
        elif pair:
            kept.append(pair)
    return kept, values


def bind_location(location: str, repository: str, key: bytes, user: str | None) -> str:
    """An upload `Location` in `repository` with this user's binding (any other binding
    dropped); any other Location unchanged."""
    parts = urlsplit(location)
    upload = classify("PATCH", parts.path)
    if not (isinstance(upload, Operation) and upload.kind == "upload"):
        return location
    if upload.repository != repository or upload.reference is None:
        return location
    kept, _ = _split(parts.query)
    kept.append(f"{PARAM}={binding(key, repository, upload.reference, user)}")
    return urlunsplit(parts._replace(query="&".join(kept)))


def check(key: bytes, operation: Operation, query: str, user: str | None) -> str | Refusal:
    """For a request to an upload: the query to forward (the binding removed), or the refusal
    when the binding is missing, repeated or another identity's."""
    kept, values = _split(query)
    assert operation.repository is not None and operation.reference is not None
    expected = binding(key, operation.repository, operation.reference, user)
    offered = values[0].encode("utf-8", "surrogateescape") if len(values) == 1 else b""
    if not hmac.compare_digest(offered, expected.encode()):
        return NOT_YOURS
    return "&".join(kept)


class UploadBinding(Guard):
    """Uploads only by whoever started them: a request to an upload must carry its starter's
    binding (taken off before forwarding), and every upload Location handed out gets one.
    `key`: the binding key without a `secret_file` (worker 0's, shared by the others)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    async def check(self, ctx: RequestContext) -> web.StreamResponse | None:
        operation, route = ctx.operation, ctx.route
        assert operation is not None and route is not None
        if operation.kind != "upload":
            return None
        path, _, query = route.raw_path.partition("?")
        own = check(self._key_of(ctx), operation, query, ctx.user)
        if isinstance(own, Refusal):
            log.warning("%s refused the upload %s of another", ctx.user, operation.reference)
            return error_response(own.status, own.code, own.message)
        ctx.route = replace(route, raw_path=f"{path}?{own}" if own else path)
        return None

    async def answered(self, ctx: RequestContext, answer: Answer) -> web.StreamResponse | None:
        operation = ctx.operation
        assert operation is not None
        location = answer.headers.get("Location")
        if location is not None and operation.kind in ("upload-start", "upload"):
            assert operation.repository is not None  # uploads always name their repository
            key = self._key_of(ctx)
            answer.headers["Location"] = bind_location(location, operation.repository, key,
                                                       ctx.user)  # fmt: skip
        return None

    def _key_of(self, ctx: RequestContext) -> bytes:
        return ctx.snapshot.key("uploads") or self._key
