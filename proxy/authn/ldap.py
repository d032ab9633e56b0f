"""LDAP / Active Directory backend: search-then-bind or direct bind, groups, TLS, successes in
the verified-credential cache (settings: `proxy.authn.ldap_settings`).

User names are escaped (RFC 4515, 4514), control characters refused; an empty password is
refused outright (an "unauthenticated bind" succeeds on many servers); certificates are always
verified; a server that cannot be reached raises `BackendUnavailable`, never an allow.
With `user_dn_template` a refused bind cannot tell an unknown user from a wrong password:
`bind_dn` then looks the entry up, or the answer is WRONG_PASSWORD.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import AuthResult, BackendUnavailable, Outcome
from .cache import VerifiedCache
from .ldap_settings import (
    SCOPES,
    LdapSettings,
    LdapUrl,
    acceptable_user,
    dn_under,
    fill_template,
    group_name,
)

with warnings.catch_warnings():
    # ldap3 2.9.1 imports names that pyasn1 >= 0.6 deprecates: harmless, but warnings are errors
    # in the tests. Only the import is covered.
    warnings.simplefilter("ignore", DeprecationWarning)
    import ldap3  # type: ignore[import-untyped]
    from ldap3.core.exceptions import LDAPException  # type: ignore[import-untyped]
    from ldap3.utils.conv import escape_filter_chars  # type: ignore[import-untyped]
    from ldap3.utils.dn import escape_rdn  # type: ignore[import-untyped]

log = logging.getLogger("regproxy.authn.ldap")

CACHE_SIZE = 10_000
IDLE_CLOSE = 120.0  # seconds: a connection unused this long is reopened (servers drop them)
DOWN_FOR = 30.0  # seconds: a URL that failed is tried after the others for this long

# Result codes (RFC 4511). A refused bind denies; anything unexpected is "cannot answer".
SUCCESS, SIZE_LIMIT_EXCEEDED, NO_SUCH_OBJECT = 0, 4, 32
# inappropriateAuthentication, invalidCredentials, insufficientAccessRights, unwillingToPerform
BIND_DENIED = frozenset({48, 49, 50, 53})
INVALID_CREDENTIALS = 49


# -- TLS -----------------------------------------------------------------------------------------


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verify the chain (against `ca_file`, or the system CAs) and the host name, TLS >= 1.2."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class _VerifyingTls(ldap3.Tls):  # type: ignore[misc]
    """ldap3's Tls with our SSLContext: the handshake checks the host name itself."""

    # ldap3 would turn check_hostname off and call the deprecated ssl.match_hostname.

    def __init__(self, context: ssl.SSLContext, hostname: str) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED)
        self._context = context
        self._hostname = hostname

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        connection.socket = self._context.wrap_socket(
            connection.socket, server_side=False, server_hostname=self._hostname
        )


# -- the thread side: connections and the check itself -------------------------------------------


class _Stale(Exception):
    """A connection that ldap3 closed behind our back: reopen it, never reuse it."""


class _Refused(Exception):
    """The server answered, but not in a way we can use: BackendUnavailable with this text."""


class _Ambiguous(Exception):
    """The user filter matched several entries: which one the password is for is unknown."""


@dataclass
class _Slot:
    """One worker's connections: `search` (service account or anonymous) and `bind` (users)."""

    search: Any = None
    bind: Any = None
    used: float = 0.0

    def close(self) -> None:
        for conn in (self.search, self.bind):
            if conn is not None:
                _discard(conn)
        self.search = self.bind = None


def _discard(conn: Any) -> None:
    """Unbind politely if the connection still works; close its socket in any case."""
    with contextlib.suppress(Exception):
        if not conn.closed:
            conn.unbind()
    sock = getattr(conn, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


class _Directory:
    """Connections and LDAP operations, called only from the worker threads."""

    def __init__(self, settings: LdapSettings) -> None:
        self.settings = settings
        self._context = tls_context(settings.ca_file) if self._uses_tls() else None
        self._receive_timeout = max(1, math.ceil(settings.timeout))
        self._lock = threading.Lock()
        self._idle: list[_Slot] = []
        self._down_until: dict[str, float] = {}
        self.closed = False

    def _uses_tls(self) -> bool:
        return self.settings.start_tls or any(url.tls for url in self.settings.urls)

    # slots

    def acquire(self) -> _Slot:
        with self._lock:
            slot = self._idle.pop() if self._idle else _Slot()
        if slot.used and time.monotonic() - slot.used > IDLE_CLOSE:
            slot.close()
        return slot

    def release(self, slot: _Slot) -> None:
        slot.used = time.monotonic()
        with self._lock:
            if not self.closed:
                self._idle.append(slot)
                return
        slot.close()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            idle, self._idle = self._idle, []
        for slot in idle:
            slot.close()

    # connections

    def _ordered_urls(self) -> list[LdapUrl]:
        now = time.monotonic()
        urls = list(self.settings.urls)
        return sorted(urls, key=lambda url: self._down_until.get(url.text, 0.0) > now)

    def _open(self) -> Any:
        """A connection to the first URL that answers (TLS verified), not yet bound."""
        errors = []
        for url in self._ordered_urls():
            try:
                conn = self._open_url(url)
            except (LDAPException, OSError) as exc:
                self._down_until[url.text] = time.monotonic() + DOWN_FOR
                log.warning("LDAP server %s unavailable: %s", url.text, exc)
                errors.append(f"{url.text}: {exc}")
                continue
            self._down_until.pop(url.text, None)
            return conn
        raise BackendUnavailable("no LDAP server answered: " + "; ".join(errors))

    def _open_url(self, url: LdapUrl) -> Any:
        """Each address of the URL's host in turn (ldap3 would leak the sockets that fail)."""
        infos = socket.getaddrinfo(url.host, url.port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        last: Exception = OSError(f"no address for {url.host}")
        for address in addresses:
            if self.settings.clear_text_refused(url, address):
                last = OSError(
                    f"{url.host} resolves to {address}: not loopback, and the URL is "
                    "plain ldap:// (allow_insecure: true would send passwords there)"
                )
                continue
            tls = _VerifyingTls(self._context, url.host) if self._context else None
            server = ldap3.Server(
                address,
                port=url.port,
                use_ssl=url.tls,
                tls=tls,
                get_info=ldap3.NONE,
                connect_timeout=self.settings.timeout,
                mode=ldap3.IP_SYSTEM_DEFAULT,
            )
            conn = ldap3.Connection(
                server,
                client_strategy=ldap3.SYNC,
                auto_bind=ldap3.AUTO_BIND_NONE,
                raise_exceptions=False,
                read_only=True,
                auto_referrals=False,
                receive_timeout=self._receive_timeout,
            )
            try:
                conn.open(read_server_info=False)
                if self.settings.start_tls:
                    conn.start_tls(read_server_info=False)
            except (LDAPException, OSError) as exc:
                _discard(conn)
                last = exc
                continue
            return conn
        raise last

    def _search_conn(self, slot: _Slot) -> Any:
        if slot.search is None:
            conn = self._open()
            if self.settings.bind_dn is not None:
                code, text = self._bind(conn, self.settings.bind_dn, self.settings.bind_password)
                if code != SUCCESS:
                    _discard(conn)
                    raise _Refused(f"the service account bind (bind_dn) was refused: {code} {text}")
            slot.search = conn
        return slot.search

    def _bind_conn(self, slot: _Slot) -> Any:
        if slot.bind is None:
            slot.bind = self._open()
        return slot.bind

    def _usable(self, conn: Any) -> Any:
        # A connection ldap3 closed would be reopened by the next operation, without StartTLS.
        if conn.closed or (self.settings.start_tls and not conn.tls_started):
            raise _Stale("connection closed")
        return conn

    def _bind(self, conn: Any, dn: str, password: str | bytes | None) -> tuple[int, str]:
        conn = self._usable(conn)
        conn.authentication = ldap3.SIMPLE
        conn.user = dn
        conn.password = password.encode() if isinstance(password, str) else password
        try:
            conn.bind(read_server_info=False)
        finally:
            conn.password = None
            conn.request = None  # ldap3 keeps the last request, password included
        result = conn.result or {}
        return int(result.get("result", -1)), str(result.get("description", "no answer"))

    def _search(
        self, conn: Any, base: str, filter: str, scope: str, attributes: list[str], limit: int
    ) -> tuple[int, str, list[dict[str, Any]]]:
        conn = self._usable(conn)
        conn.search(
            base,
            filter,
            search_scope=scope,
            attributes=attributes or [ldap3.NO_ATTRIBUTES],
            size_limit=limit,
            time_limit=self._receive_timeout,
            dereference_aliases=ldap3.DEREF_NEVER,
        )
        result = conn.result or {}
        entries = [r for r in conn.response or [] if r.get("type") == "searchResEntry"]
        return int(result.get("result", -1)), str(result.get("description", "")), entries

    # the check

    def check(self, user: str, password: bytes, deadline: float) -> AuthResult:
        """One login, in a worker thread. Raises BackendUnavailable if it cannot answer."""
        if time.monotonic() > deadline:
            raise BackendUnavailable("LDAP check waited too long for a free connection")
        if self.closed:
            raise BackendUnavailable("LDAP backend closed")
        slot = self.acquire()
        try:
            for attempt in range(2):
                reused = slot.search is not None or slot.bind is not None
                try:
                    result = self._check(slot, user, password)
                except _Refused as exc:
                    slot.close()
                    raise BackendUnavailable(str(exc)) from None
                except (LDAPException, OSError, _Stale) as exc:
                    slot.close()
                    if reused and attempt == 0:  # a pooled connection the server had dropped
                        log.debug("LDAP connection lost (%s): retrying on a new one", exc)
                        continue
                    raise BackendUnavailable(f"LDAP server failed: {exc}") from None
                return result
            raise AssertionError("unreachable")
        finally:
            self.release(slot)

    def _check(self, slot: _Slot, user: str, password: bytes) -> AuthResult:
        s = self.settings
        if s.search:
            try:
                found = self._find_user(slot, user)
            except _Ambiguous:
                log.warning("LDAP user filter matches several entries for %r: refused", user)
                return AuthResult(Outcome.WRONG_PASSWORD)
            if found is None:
                return AuthResult(Outcome.NO_SUCH_USER)
            dn, attributes = found
            if not self._spelled_as_in_directory(user, attributes):
                return AuthResult(Outcome.NO_SUCH_USER)
        else:
            assert s.user_dn_template is not None
            escape = escape_rdn if s.template_is_dn else str
            dn = fill_template(s.user_dn_template, escape, user=user)
        if _utf8(password):
            code, text = self._bind(self._bind_conn(slot), dn, password)
        else:  # ldap3 cannot send it (and no directory stores it): refused like a wrong one
            code, text = INVALID_CREDENTIALS, "the password is not UTF-8"
        if code in BIND_DENIED:
            if not s.search and s.bind_dn is not None and not self._exists(slot, dn):
                return AuthResult(Outcome.NO_SUCH_USER)
            return AuthResult(Outcome.WRONG_PASSWORD)
        if code == NO_SUCH_OBJECT and not s.search:
            return AuthResult(Outcome.NO_SUCH_USER)
        if code != SUCCESS:
            raise _Refused(f"LDAP bind failed: {code} {text}")
        if not s.search:
            attributes = self._read_entry(slot, dn)
            if not self._spelled_as_in_directory(user, attributes):
                return AuthResult(Outcome.NO_SUCH_USER)
        member_of = (
            attributes.get(s.member_of_attribute.lower(), []) if s.member_of_attribute else []
        )
        return AuthResult(Outcome.OK, self._groups(slot, user, dn, member_of))

    def _wanted(self) -> list[str]:
        """The attributes read from the user's entry."""
        s = self.settings
        wanted = [*s.user_name_attributes]
        return [*wanted, s.member_of_attribute] if s.member_of_attribute else wanted

    def _spelled_as_in_directory(self, user: str, attributes: Mapping[str, list[str]]) -> bool:
        """The login name is exactly a value of a naming attribute."""
        # Directories match names case-insensitively; ACL rules compare them exactly.
        names = self.settings.user_name_attributes
        if not names or any(user in attributes.get(a.lower(), []) for a in names):
            return True
        log.info("LDAP login as %r refused: the directory spells the name differently", user)
        return False

    def _read_entry(self, slot: _Slot, dn: str) -> dict[str, list[str]]:
        """The wanted attributes of the user's entry after a direct bind."""
        wanted = self._wanted()
        if not wanted:
            return {}
        code, text, entries = self._search(
            self._reader(slot), dn, "(objectClass=*)", ldap3.BASE, wanted, 1
        )
        if code not in (SUCCESS, NO_SUCH_OBJECT):
            raise _Refused(f"LDAP read of {dn!r} failed: {code} {text}")
        if not entries and self.settings.user_name_attributes:
            raise _Refused(
                f"cannot read {dn!r} to check the spelling of the login name (exact_user_name)"
            )
        return _attributes(entries[0]) if entries else {}

    def _find_user(self, slot: _Slot, user: str) -> tuple[str, dict[str, list[str]]] | None:
        s = self.settings
        assert s.user_base is not None
        attributes = self._wanted()
        query = fill_template(s.user_filter, escape_filter_chars, user=user)
        code, text, entries = self._search(
            self._search_conn(slot), s.user_base, query, SCOPES[s.user_scope], attributes, 2
        )
        if code == SIZE_LIMIT_EXCEEDED or len(entries) > 1:
            raise _Ambiguous(user)
        if code != SUCCESS:
            raise _Refused(f"LDAP user search under {s.user_base!r} failed: {code} {text}")
        if not entries:
            return None
        entry = entries[0]
        return str(entry["dn"]), _attributes(entry)

    def _exists(self, slot: _Slot, dn: str) -> bool:
        code, _, entries = self._search(
            self._search_conn(slot), dn, "(objectClass=*)", ldap3.BASE, [], 1
        )
        return not (code == NO_SUCH_OBJECT or (code == SUCCESS and not entries))

    def _reader(self, slot: _Slot) -> Any:
        """Who reads groups: the service account if there is one, else the user just bound."""
        return self._search_conn(slot) if self.settings.bind_dn is not None else slot.bind

    def _groups(self, slot: _Slot, user: str, dn: str, member_of: list[str]) -> frozenset[str]:
        s = self.settings
        names: set[str] = set()
        for group_dn in member_of:
            if s.group_base is None or dn_under(group_dn, s.group_base):
                name = group_name(group_dn)
                if name:
                    names.add(name)
        if s.group_filter is not None:
            assert s.group_base is not None
            query = fill_template(s.group_filter, escape_filter_chars, user=user, dn=dn)
            code, text, entries = self._search(
                self._reader(slot),
                s.group_base,
                query,
                SCOPES[s.group_scope],
                [s.group_name_attribute],
                0,
            )
            if code == SIZE_LIMIT_EXCEEDED:
                log.warning("LDAP group search for %r hit the server's size limit", user)
            elif code != SUCCESS:
                raise _Refused(f"LDAP group search under {s.group_base!r} failed: {code} {text}")
            for entry in entries:
                values = _attributes(entry).get(s.group_name_attribute.lower(), [])
                name = values[0] if values else group_name(str(entry["dn"]))
                if name:
                    names.add(name)
        return frozenset(names)


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _attributes(entry: Mapping[str, Any]) -> dict[str, list[str]]:
    """An entry's attributes as {lower-case name: values as text}."""
    raw: Mapping[str, Any] = entry.get("raw_attributes") or {}
    return {
        str(name).lower(): [v.decode("utf-8", "replace") for v in values]
        for name, values in raw.items()
    }


# -- the asyncio side ----------------------------------------------------------------------------


class LdapAuthenticator:
    """The LDAP backend (`proxy.authn.Authenticator`); `close()` when done."""

    def __init__(
        self,
        settings: LdapSettings,
        clock: Callable[[], float] = time.monotonic,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self.settings = settings
        self._directory = _Directory(settings)
        self._executor = ThreadPoolExecutor(settings.pool_size, thread_name_prefix="regproxy-ldap")
        self._cache: VerifiedCache[AuthResult] = VerifiedCache(
            settings.cache_ttl, cache_size, clock
        )

    async def authenticate(self, user: str, password: str, proven: bool = False) -> AuthResult:
        if not password:
            return AuthResult(Outcome.WRONG_PASSWORD)  # never an "unauthenticated bind"
        if not acceptable_user(user, self.settings):
            return AuthResult(Outcome.NO_SUCH_USER)
        secret = password.encode("utf-8", "surrogateescape")
        budget = self.settings.budget
        try:
            return await asyncio.wait_for(
                self._cache.check(
                    user,
                    secret,
                    lambda: self._check(user, secret, time.monotonic() + budget),
                    keep=lambda result: result.outcome is Outcome.OK,
                ),
                budget,
            )
        except TimeoutError:
            raise BackendUnavailable(f"LDAP server did not answer within {budget:g}s") from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and not task.cancelling():
                raise BackendUnavailable("LDAP backend closed") from None  # by close()
            raise

    async def _check(self, user: str, secret: bytes, deadline: float) -> AuthResult:
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(
                self._executor, self._directory.check, user, secret, deadline
            )
        except RuntimeError:  # the executor was shut down
            raise BackendUnavailable("LDAP backend closed") from None
        return await future

    def forget(self, user: str | None = None) -> None:
        """Drop cached logins (of one user, or all): the next check asks the server."""
        self._cache.forget(user)

    def close(self) -> None:
        """Release the connections and the threads; later checks raise BackendUnavailable."""
        self._directory.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._cache.forget()
