"""Distribution-spec JSON error answers, each carrying the API version header.

The docker client's login looks for `Docker-Distribution-Api-Version` on the 401 it gets from
`/v2/`; every `/v2` answer the proxy makes itself carries it too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web

API_VERSION_HEADER = "Docker-Distribution-Api-Version"
API_VERSION = "registry/2.0"
SERVER = "regproxy"  # no version: it only helps attackers


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A `{"errors": [{"code", "message"}]}` answer."""
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]})
    response = web.Response(
        status=status, text=body, content_type="application/json", headers=headers
    )
    response.headers[API_VERSION_HEADER] = API_VERSION
    response.headers["Server"] = SERVER
    return response


def unauthorized(realm: str, message: str = "authentication required") -> web.Response:
    return error_response(
        401, "UNAUTHORIZED", message, {"WWW-Authenticate": f'Basic realm="{realm}"'}
    )


def ping_response() -> web.Response:
    """What the registry answers to an authenticated `GET /v2/`."""
    response = web.Response(body=b"{}", content_type="application/json")
    response.headers[API_VERSION_HEADER] = API_VERSION
    response.headers["Server"] = SERVER
    return response
