"""Distribution-spec JSON error answers, each carrying the API version header (the docker
client's login looks for it on the 401 from `/v2/`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache

from aiohttp import web

API_VERSION_HEADER = "Docker-Distribution-Api-Version"
API_VERSION = "registry/2.0"
SERVER = "regproxy"  # no version: it only helps attackers
JSON = "application/json; charset=utf-8"


# Built once per distinct answer: the anonymous 401 is the busiest path there is.
@lru_cache(maxsize=256)
def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()


@lru_cache(maxsize=256)
def _headers(content_type: str, extra: tuple[tuple[str, str], ...] = ()) -> Mapping[str, str]:
    return {
        "Content-Type": content_type,
        API_VERSION_HEADER: API_VERSION,
        "Server": SERVER,
        **dict(extra),
    }


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A `{"errors": [{"code", "message"}]}` answer."""
    extra = tuple(headers.items()) if headers else ()
    return web.Response(
        status=status, body=_error_body(code, message), headers=_headers(JSON, extra)
    )


def unauthorized(realm: str, message: str = "authentication required") -> web.Response:
    return error_response(
        401, "UNAUTHORIZED", message, {"WWW-Authenticate": f'Basic realm="{realm}"'}
    )


def ping_response() -> web.Response:
    """What the registry answers to an authenticated `GET /v2/`."""
    return web.Response(body=b"{}", headers=_headers("application/json"))
