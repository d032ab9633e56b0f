"""An issuer's signing keys: found by OIDC discovery (or `jwks_uri`), fetched over verified
HTTPS, cached, and fetched again when old or when a token names an unknown `kid`.

When the issuer cannot be reached the keys already fetched stay in use; without any usable key
a token cannot be checked (`BackendUnavailable`: 503, never an allow).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from ..core.flight import SingleFlight
from ..http.bodies import TooLarge, read_whole
from . import BackendUnavailable
from .jwt import ALGORITHMS, Key, key_fits

log = logging.getLogger("regproxy.authn.oidc")

MIN_RSA_BITS = 2048
DISCOVERY = "/.well-known/openid-configuration"


def _key(entry: Any) -> Key | None:
    if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
        return None
    public = {k: v for k, v in entry.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
    try:
        if entry.get("kty") == "RSA":
            # Measured before importing: joserfc warns about (but takes) small keys.
            return RSAKey.import_key(public) if _bits(entry.get("n")) >= MIN_RSA_BITS else None
        if entry.get("kty") == "EC" and entry.get("crv") == "P-256":
            return ECKey.import_key(public)
    except (JoseError, ValueError, TypeError):
        return None
    return None


def _bits(modulus: Any) -> int:
    if not isinstance(modulus, str):
        return 0
    try:
        raw = base64.urlsafe_b64decode(modulus + "=" * (-len(modulus) % 4))
    except (binascii.Error, ValueError):
        return 0
    return int.from_bytes(raw).bit_length()


def parse_jwks(document: Any) -> tuple[Key, ...]:
    """The usable signing keys of a JWKS document (possibly none)."""
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        return ()
    keys = (_key(entry) for entry in entries)
    return tuple(k for k in keys if k is not None and any(key_fits(k, a) for a in ALGORITHMS))


def candidates(keys: tuple[Key, ...], kid: str | None, algorithm: str) -> list[Key]:
    """The keys that may have signed a token with this kid and algorithm."""
    return [k for k in keys if (kid is None or k.kid == kid) and key_fits(k, algorithm)]


@dataclass(frozen=True)
class Endpoint:
    """Where and how one issuer's keys are fetched (a KeySource is reused while it is equal)."""

    issuer: str
    jwks_uri: str | None
    ca_pem: str | None  # the ca_file's contents: a new CA means a new source
    timeout: float
    refresh: float
    min_interval: float
    max_size: int  # bytes a discovery document or key set may have


@dataclass
class _Fetched:
    keys: tuple[Key, ...] = ()
    at: float | None = None  # last success (monotonic)
    attempted: float | None = None  # last attempt, successful or not
    failed: bool = False  # whether the last attempt failed


class KeySource:
    """One issuer's keys, cached in this process."""

    def __init__(self, endpoint: Endpoint, clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoint = endpoint
        self._clock = clock
        self._context = ssl.create_default_context(cadata=endpoint.ca_pem)
        self._state = _Fetched()
        self._fetches: SingleFlight[None, None] = SingleFlight()  # one fetch at a time

    async def keys_for(self, kid: str | None, algorithm: str) -> list[Key]:
        """The keys a token may be checked with ([] when the issuer has none for it);
        BackendUnavailable when none can be had. Old keys are replaced in the background."""
        state = self._state
        if state.at is None:
            await self._refresh(wait=True)
        elif self._clock() - state.at >= self.endpoint.refresh:
            await self._refresh(wait=False)
        found = candidates(state.keys, kid, algorithm)
        if not found and kid is not None and state.keys:
            await self._refresh(wait=True)  # a key the issuer may have added (rotation)
            found = candidates(state.keys, kid, algorithm)
        if not state.keys or (not found and state.failed):
            raise BackendUnavailable(f"no usable signing keys from {self.endpoint.issuer}")
        return found

    def _may_fetch(self, now: float) -> bool:
        attempted = self._state.attempted
        return attempted is None or now - attempted >= self.endpoint.min_interval

    async def _refresh(self, wait: bool) -> None:
        """Fetch the keys (or join the fetch under way), at most once per min_interval."""
        state, now = self._state, self._clock()
        if not self._fetches.under_way(None):
            if not self._may_fetch(now):
                return
            state.attempted = now
        fetch = self._fetches.start(None, self._fetch)
        if wait:
            await asyncio.shield(fetch)

    async def _fetch(self) -> None:
        state, endpoint = self._state, self.endpoint
        try:
            async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=endpoint.timeout),
                connector=aiohttp.TCPConnector(ssl=self._context),
                cookie_jar=aiohttp.DummyCookieJar(),
            ) as session:
                uri = endpoint.jwks_uri or await self._discover(session)
                keys = parse_jwks(await _get_json(session, uri, endpoint.max_size))
        except Exception as exc:  # whatever the issuer sends or does: logged, never raised
            state.failed = True
            held = f"keeping {len(state.keys)} cached key(s)" if state.keys else "no keys"
            log.error("cannot fetch the signing keys of %s (%s): %s", endpoint.issuer, held, exc)
            return
        if not keys:
            state.failed = True
            log.error("%s publishes no usable signing key (RS256, ES256)", endpoint.issuer)
            return
        state.keys, state.at, state.failed = keys, self._clock(), False
        log.info("fetched %d signing key(s) of %s", len(keys), endpoint.issuer)

    async def _discover(self, session: aiohttp.ClientSession) -> str:
        issuer = self.endpoint.issuer
        document = await _get_json(session, issuer.rstrip("/") + DISCOVERY, self.endpoint.max_size)
        if not isinstance(document, Mapping) or document.get("issuer") != issuer:
            raise ValueError("the discovery document names another issuer")
        uri = document.get("jwks_uri")
        if not isinstance(uri, str) or urlsplit(uri).scheme != "https":
            raise ValueError(f"the discovery document's jwks_uri is not https: {uri!r}")
        return uri


async def _get_json(session: aiohttp.ClientSession, url: str, limit: int) -> Any:
    """A JSON document, at most `limit` bytes, from a 200 answer (redirects refused)."""
    async with session.get(url, allow_redirects=False) as response:
        if response.status != 200:
            raise ValueError(f"{url} answered {response.status}")
        try:
            return json.loads(await read_whole(response.content, limit))
        except TooLarge:
            raise ValueError(f"{url}: document larger than {limit} bytes") from None
