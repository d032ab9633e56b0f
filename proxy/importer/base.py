"""What Apache and nginx translation share: the directive tree, who-may-do-what (`Grant`),
the output (`Out`) and the settings both translate alike. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from ..core.addresses import parse_upstream
from ..core.problems import Problem

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
ALL = frozenset(METHODS)
MAX_DEPTH = 50  # nesting deeper than this is refused, never a RecursionError
Entry = tuple[frozenset[str], "Grant", bool]  # methods, who, blocked by an address rule


@dataclass(frozen=True)
class Directive:
    """A directive or a section (`block` not None), from either syntax."""

    name: str
    args: tuple[str, ...]
    line: int
    block: tuple[Directive, ...] | None = None
    brackets: bool = False  # an Apache <Section>

    @property
    def key(self) -> str:
        return self.name.lower()

    def __str__(self) -> str:
        shown = (
            a if a and not re.search(r"[\s\"']", a) else '"' + a.replace('"', '\\"') + '"'
            for a in (self.name, *self.args)
        )
        text = " ".join(shown)
        text = text if len(text) <= 72 else text[:69] + "..."
        return printable(f"<{text}>" if self.brackets else text)


@dataclass(frozen=True)
class Grant:
    """Who may use a method: anyone (even without credentials), any valid user, or names."""

    anyone: bool = False
    valid: bool = False
    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()

    @property
    def any_valid(self) -> bool:
        return self.anyone or self.valid

    def __or__(self, other: Grant) -> Grant:
        """Either suffices: Apache's implicit <RequireAny>."""
        return Grant(
            self.anyone or other.anyone,
            self.valid or other.valid,
            self.users | other.users,
            self.groups | other.groups,
        )

    def __and__(self, other: Grant) -> Grant:
        """Both are needed. A name on one side only (user here, group there) cannot be one
        rule, so it is dropped: that only denies more."""

        def both(a: frozenset[str], b: frozenset[str]) -> frozenset[str]:
            return (a if other.any_valid else a & b) | (b if self.any_valid else frozenset())

        return Grant(
            self.anyone and other.anyone,
            self.any_valid and other.any_valid,
            both(self.users, other.users),
            both(self.groups, other.groups),
        )


NOBODY, ANYONE, VALID = Grant(), Grant(anyone=True), Grant(valid=True)


@dataclass(frozen=True)
class Note(Problem):
    """A directive the import could not carry over as written (`translated`: with a
    difference to check; otherwise left out)."""

    translated: bool = False


@dataclass
class Out:
    """What a walk found: settings, notes, access entries, and whether the policy was lost."""

    source: str
    values: dict[str, str] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    acl: list[dict[str, object]] = field(default_factory=list)
    deny_all: bool = False
    policy_line: int = 0

    def note(self, where: Directive | int, why: str, *, translated: bool = False) -> None:
        if isinstance(where, Directive):
            self.notes.append(Note(self.source, where.line, f"{where} — {why}", translated))
        else:
            self.notes.append(Note(self.source, where, why, translated))

    def set(self, key: str, value: str, d: Directive) -> None:
        """regproxy has one of each: the first value wins, a different one is a note."""
        kept = self.values.setdefault(key, value)
        if kept != value:
            self.note(d, f"regproxy has one {key}; {kept} is kept")

    def lost(self, d: Directive) -> None:
        """A section regproxy cannot express; if it restricts access, deny everything."""
        if contains(d, ACCESS_KEYS):
            self.deny_all = True
            self.note(d, "access rules regproxy cannot express: the generated acl denies all")
        else:
            self.note(d, _WHY.get(d.key, "section not translated"))


def error(source: str, line: int, message: str) -> ValueError:
    return ValueError(str(Problem(source, line, message)))


def printable(text: str) -> str:
    """Control characters escaped, so notes and YAML comments stay one clean line."""
    bad = r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]"
    return re.sub(bad, lambda m: f"\\u{ord(m.group()):04x}", text)


# fmt: off
# Directives that restrict access: a section holding one that cannot be translated denies all.
ACCESS_KEYS = {"require", "allow", "deny", "authtype", "satisfy", "limit", "limitexcept",
               "auth_basic", "auth_request", "limit_except"}
# fmt: on


def contains(d: Directive, keys: set[str]) -> bool:
    return any(c.key in keys or contains(c, keys) for c in d.block or ())


NAME_RE = re.compile(r"[^\s:]+")  # what acl users/groups and push_group accept
_LISTEN_RE = re.compile(r"\[[0-9a-fA-F:.]+\]:(\d+)|[^:\[\]\s]+:(\d+)")
_CONTAINER_DIRS = ("/usr/local/apache2/", "/etc/apache2/", "/etc/httpd/", "/etc/nginx/",
                   "/usr/local/nginx/")  # fmt: skip
_HEADERS = {
    "docker-distribution-api-version": "regproxy sets Docker-Distribution-Api-Version itself",
    "x-forwarded-proto": "regproxy sets X-Forwarded-Proto: https itself",
    "x-forwarded-for": "regproxy sets X-Forwarded-For itself",
    "host": "regproxy keeps the client's Host itself",
    "x-real-ip": "regproxy passes the client address in X-Forwarded-For, not X-Real-IP",
}


def set_listen(out: Out, d: Directive, server: str) -> None:
    """A bare port binds every interface: kept (0.0.0.0), though regproxy defaults to loopback."""
    value = d.args[0] if d.args else ""
    port = value.removeprefix("*:")
    if port.isdigit():
        value = f"0.0.0.0:{port}"
        out.note(
            d,
            f"{server} listens on every interface: translated to {value} (IPv4; "
            f"[::]:{port} for IPv6); regproxy's default would be loopback-only "
            f"127.0.0.1:{port}",
            translated=True,
        )
    match = _LISTEN_RE.fullmatch(value)
    if not match or not 0 < int(match.group(1) or match.group(2)) < 65536:
        out.note(d, "not an address regproxy can listen on (HOST:PORT or [IPv6]:PORT)")
        return
    out.set("listen", value, d)


def set_listens(out: Out, listens: list[Directive], server: str) -> None:
    """regproxy listens on one address: the first of `listens` (callers put the one serving
    the registry first); the others are notes."""
    for n, d in enumerate(listens):
        if n == 0:
            set_listen(out, d, server)
        else:
            out.note(d, "regproxy listens on one address: not used")


def set_path(out: Out, d: Directive, key: str, server: str) -> None:
    """Paths are kept as written; say when they only make sense inside the old container."""
    if len(d.args) != 1 or not d.args[0]:
        out.note(d, "expected one file name")
        return
    path = d.args[0]
    if path.startswith(_CONTAINER_DIRS) and "$" not in path:
        out.note(
            d,
            f"kept as written, but this looks like a path inside the {server} "
            "container: use the path regproxy sees (compose/docker-compose.yml mounts "
            f"it as /etc/regproxy/{PurePosixPath(path).name})",
            translated=True,
        )
    if "$" in path:
        out.note(d, "kept as written: regproxy does not expand variables in paths", translated=True)
    elif not path.startswith("/"):
        out.note(
            d,
            f"relative path kept: {server} resolves it against its own root, "
            "regproxy against this YAML file's directory",
            translated=True,
        )
    out.set(key, path, d)


def set_realm(out: Out, d: Directive) -> None:
    realm = " ".join(d.args)
    if not realm or '"' in realm or "\\" in realm or not realm.isprintable():
        out.note(d, "regproxy's realm is printable text without quotes: default kept")
    else:
        out.set("realm", realm, d)


def note_header(out: Out, d: Directive) -> None:
    why = next((_HEADERS[a.lower()] for a in d.args if a.lower() in _HEADERS), None)
    out.note(d, why or "regproxy does not add or change other headers")


def url_part(url: str, part: str) -> str:
    """netloc or path of a URL; "" for none or a malformed one (e.g. an unclosed `[`)."""
    try:
        return str(getattr(urlsplit(url), part)) if "://" in url else ""
    except ValueError:
        return ""


def upstream_of(url: str) -> str | None:
    try:
        scheme = url.partition("://")[0]
        return None if "$" in url else parse_upstream(f"{scheme}://{url_part(url, 'netloc')}")
    except ValueError:
        return None


def set_upstream(out: Out, d: Directive, path: str, url: str, passthrough: bool) -> None:
    """`path` -> `url`; regproxy forwards /v2 paths unchanged, so only host and port carry."""
    if url == "!":
        out.note(d, "not needed: regproxy proxies only /v2 and answers the rest itself")
        return
    if path.rstrip("/") not in ("", "/v2"):
        out.note(d, "regproxy proxies only /v2: this mapping is not translated")
        return
    target = url_part(url, "path")
    if target.rstrip("/") != path.rstrip("/") and not (passthrough and not target):
        out.note(d, f"path rewrite {path} -> {target or '/'} not supported: paths stay as sent")
    upstream = upstream_of(url)
    if upstream is None:
        out.note(d, "not an http(s)://host[:port] upstream regproxy can use")
    else:
        out.set("upstream", upstream, d)


# fmt: off
_TLS_WHY = "regproxy has its own fixed TLS (1.2 and up, ECDHE key exchange, AEAD ciphers)"
_LOG_WHY = "regproxy logs to standard error and the access log (see log_level, access_log)"
_WHY = {
    "satisfy": "not translated: regproxy always requires what its rules say",
    "sslengine": "regproxy always serves TLS",
    "sslcertificatechainfile": "append the chain to the tls.cert file (one PEM chain)",
    "authtype": "regproxy does HTTP Basic authentication only",
    "authbasicprovider": "regproxy authenticates against one htpasswd file only",
    "proxyrequests": "regproxy is never a forward proxy",
    "proxypreservehost": "regproxy always keeps the client's Host",
    "proxytimeout": "see timeouts.connect and timeouts.read",
    "proxy_read_timeout": "see timeouts.read (default 300 s)",
    "proxy_connect_timeout": "see timeouts.connect (default 5 s)",
    "client_max_body_size": "regproxy streams bodies of any size",
    "include": "not followed: import the included file separately, or paste it in",
    "map": "variables are not translated (the recipe's map only serves a header regproxy "
           "sets itself)",
    "return": "regproxy answers only the registry's endpoints",
    "location": "regproxy serves only /v2 and its endpoints: not translated",
    "if": "regproxy does not match requests on variables (such as the User-Agent)",
    **dict.fromkeys(["errorlog", "customlog", "logformat", "loglevel", "transferlog",
                     "error_log", "access_log", "log_format"], _LOG_WHY),
}
_QUIET = {  # directive -> the value that needs no note ("": any value)
    **dict.fromkeys(["loadmodule", "serverroot", "servername", "serveradmin", "user", "group",
                     "sslrandomseed", "allowoverride", "server_name", "events", "pid",
                     "worker_processes", "proxy_http_version"], ""),
    "ssl": "on", "sslengine": "on", "authtype": "basic", "authbasicprovider": "file",
    "proxyrequests": "off", "proxypreservehost": "on", "client_max_body_size": "0",
    "chunked_transfer_encoding": "on", "proxy_buffering": "off",
    "proxy_request_buffering": "off",
}
# fmt: on


def note_other(out: Out, d: Directive) -> None:
    """Everything without a translation: silent when harmless, else a note saying why."""
    expected = _QUIET.get(d.key)
    if expected is not None and expected in ("", " ".join(d.args).lower()):
        return
    if "ldap" in d.key:
        out.note(d, "LDAP directives are not translated: set up regproxy's authentication by hand")
    elif d.key.startswith("ssl") and d.key not in _WHY:
        out.note(d, _TLS_WHY)
    else:
        out.note(d, _WHY.get(d.key, "not translated: regproxy has no equivalent"))


def method_mask(d: Directive) -> frozenset[str]:
    """The methods a <Limit>, <LimitExcept> or limit_except block applies to (GET means HEAD)."""
    named = {m.upper() for m in d.args} | ({"HEAD"} if "GET" in map(str.upper, d.args) else set())
    return frozenset(named & ALL) if d.key == "limit" else ALL - named
