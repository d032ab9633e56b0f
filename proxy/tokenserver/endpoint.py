"""The token server's HTTP endpoint: `GET` with Basic credentials or the OAuth2 password grant
(`POST`), the caller authenticated as any request is, OAuth2 errors."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from multidict import MultiMapping

from ..authn.chain import Denied
from ..authn.credentials import basic_header
from ..http import web
from ..observe.audit import audit_token
from ..policy.grants import Grants
from ..policy.identity import Identity
from ..policy.rules import Rule
from .scopes import Signer, TokenSettings, issue

log = logging.getLogger("regproxy.token")

Identify = Callable[[list[str]], Awaitable[Identity | Denied]]
Refuse = Callable[[Denied], web.StreamResponse]


async def token_endpoint(
    request: web.BaseRequest,
    settings: TokenSettings,
    signer: Signer,
    rules: tuple[Rule, ...],
    grants: Grants,
    identify: Identify,
    refuse: Refuse,
) -> web.StreamResponse:
    """Authenticate the caller (`identify`, `refuse`) and issue a token for the scopes the
    rules (or the grants in force) give; each scope a grant gave is audited."""
    params: MultiMapping[str | bytes | object]
    if request.method == "GET":
        params = request.query
        authorization = request.headers.getall("Authorization", [])
    elif request.method == "POST":
        try:
            params = await request.post()
        except ValueError:
            return oauth_error(400, "invalid_request", "malformed form")
        if params.get("grant_type") != "password":
            return oauth_error(400, "unsupported_grant_type")
        user, password = str(params.get("username", "")), str(params.get("password", ""))
        authorization = [basic_header(user, password)] if user else []
    else:
        return oauth_error(405, "invalid_request")
    if params.get("service") != settings.service:
        return oauth_error(400, "invalid_request", "unknown service")
    who = await identify(authorization)
    if isinstance(who, Denied):
        return refuse(who)
    account = params.get("account")
    if account and account != who.user:
        return oauth_error(400, "invalid_request", "account does not match the credentials")
    scopes = [str(v) for v in params.getall("scope", [])]
    now = time.time()
    answer, access = issue(settings, signer, rules, who, scopes, now, grants.at(now))
    log.info("token for %s: %s", who.user or "anonymous", answer["scope"] or "(no access)")
    for scope in access:
        for grant in scope.grants:
            audit_token(who, str(scope.scope), grant)
    return web.json_response(answer)


def oauth_error(status: int, error: str, description: str = "") -> web.Response:
    body = {"error": error, **({"error_description": description} if description else {})}
    return web.json_response(body, status=status)
