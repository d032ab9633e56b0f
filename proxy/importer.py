"""`regproxy import`: an Apache httpd.conf or nginx config written like the recipes -> YAML. Pure.

`import_config(text, source)` returns the regproxy YAML and the notes: every directive it could
not translate, as `file:line: directive — why`. Structural errors (unbalanced sections or
braces, unterminated quotes, binary or empty input, neither Apache nor nginx) raise ValueError
with file:line. When the access policy cannot be expressed, the output denies rather than allows.

regproxy decides per action, not per method: pull is GET/HEAD, push is POST/PUT/PATCH (and an
upload's GET/DELETE), delete is DELETE. When one action's methods differ, the stricter applies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import reduce
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import yaml

from .credentials import Problem
from .policy import parse_upstream
from .routes import ACTIONS, Action

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
ALL = frozenset(METHODS)
_ACTION_METHODS: dict[Action, tuple[str, ...]] = {
    "pull": ("GET", "HEAD"), "push": ("POST", "PUT", "PATCH"), "delete": ("DELETE",)
}  # fmt: skip
MAX_DEPTH = 50  # nesting deeper than this is refused, never a RecursionError
_Entry = tuple[frozenset[str], "Grant", bool]  # methods, who, blocked by an address rule


@dataclass(frozen=True)
class Imported:
    """The YAML to write, and what could not be translated (for standard error)."""

    yaml_text: str
    notes: tuple[Problem, ...]


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
        shown = (a if a and not re.search(r"[\s\"']", a) else '"' + a.replace('"', '\\"') + '"'
                 for a in (self.name, *self.args))  # fmt: skip
        text = " ".join(shown)
        text = text if len(text) <= 72 else text[:69] + "..."
        return _printable(f"<{text}>" if self.brackets else text)


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
        return Grant(self.anyone or other.anyone, self.valid or other.valid,
                     self.users | other.users, self.groups | other.groups)  # fmt: skip

    def __and__(self, other: Grant) -> Grant:
        """Both are needed. A name on one side only (user here, group there) cannot be one
        rule, so it is dropped: that only denies more."""

        def both(a: frozenset[str], b: frozenset[str]) -> frozenset[str]:
            return (a if other.any_valid else a & b) | (b if self.any_valid else frozenset())

        return Grant(self.anyone and other.anyone, self.any_valid and other.any_valid,
                     both(self.users, other.users), both(self.groups, other.groups))  # fmt: skip


NOBODY, ANYONE, VALID = Grant(), Grant(anyone=True), Grant(valid=True)


@dataclass
class _Out:
    """What a walk found: settings, notes, access entries, and whether the policy was lost."""

    source: str
    values: dict[str, str] = field(default_factory=dict)
    notes: list[Problem] = field(default_factory=list)
    entries: list[_Entry] = field(default_factory=list)
    acl: list[dict[str, object]] = field(default_factory=list)
    deny_all: bool = False
    policy_line: int = 0

    def note(self, where: Directive | int, why: str) -> None:
        if isinstance(where, Directive):
            self.notes.append(Problem(self.source, where.line, f"{where} — {why}"))
        else:
            self.notes.append(Problem(self.source, where, why))

    def set(self, key: str, value: str, d: Directive) -> None:
        """regproxy has one of each: the first value wins, a different one is a note."""
        kept = self.values.setdefault(key, value)
        if kept != value:
            self.note(d, f"regproxy has one {key}; {kept} is kept")

    def lost(self, d: Directive) -> None:
        """A section regproxy cannot express; if it restricts access, deny everything."""
        if _contains(d, _ACCESS_KEYS):
            self.deny_all = True
            self.note(d, "access rules regproxy cannot express: the generated acl denies all")
        else:
            self.note(d, _WHY.get(d.key, "section not translated"))


def _error(source: str, line: int, message: str) -> ValueError:
    return ValueError(str(Problem(source, line, message)))


def _printable(text: str) -> str:
    """Control characters escaped, so notes and YAML comments stay one clean line."""
    bad = r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]"
    return re.sub(bad, lambda m: f"\\u{ord(m.group()):04x}", text)


_ACCESS_KEYS = {"require", "allow", "deny", "authtype", "auth_basic", "auth_request", "satisfy",
                "limit", "limitexcept", "limit_except"}  # fmt: skip


def _contains(d: Directive, keys: set[str]) -> bool:
    return any(c.key in keys or _contains(c, keys) for c in d.block or ())


# ---------------------------------------------------------------- settings shared by both
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


def _listen(out: _Out, d: Directive, server: str) -> None:
    """A bare port binds every interface: kept (0.0.0.0), though regproxy defaults to loopback."""
    value = d.args[0] if d.args else ""
    port = value.removeprefix("*:")
    if port.isdigit():
        value = f"0.0.0.0:{port}"
        out.note(d, f"{server} listens on every interface: translated to {value} (IPv4; "
                 f"[::]:{port} for IPv6); regproxy's default would be loopback-only "
                 f"127.0.0.1:{port}")  # fmt: skip
    match = _LISTEN_RE.fullmatch(value)
    if not match or not 0 < int(match.group(1) or match.group(2)) < 65536:
        out.note(d, "not an address regproxy can listen on (HOST:PORT or [IPv6]:PORT)")
        return
    out.set("listen", value, d)


def _path(out: _Out, d: Directive, key: str, server: str) -> None:
    """Paths are kept as written; say when they only make sense inside the old container."""
    if len(d.args) != 1 or not d.args[0]:
        out.note(d, "expected one file name")
        return
    path = d.args[0]
    if path.startswith(_CONTAINER_DIRS):
        out.note(d, f"kept as written, but this looks like a path inside the {server} "
                 "container: use the path regproxy sees (compose/docker-compose.yml mounts "
                 f"it as /etc/regproxy/{PurePosixPath(path).name})")  # fmt: skip
    elif not path.startswith("/"):
        out.note(d, f"relative path kept: {server} resolves it against its own root, "
                 "regproxy against this YAML file's directory")  # fmt: skip
    out.set(key, path, d)


def _realm(out: _Out, d: Directive) -> None:
    realm = " ".join(d.args)
    if not realm or '"' in realm or "\\" in realm or not realm.isprintable():
        out.note(d, "regproxy's realm is printable text without quotes: default kept")
    else:
        out.set("realm", realm, d)


def _header(out: _Out, d: Directive) -> None:
    why = next((_HEADERS[a.lower()] for a in d.args if a.lower() in _HEADERS), None)
    out.note(d, why or "regproxy does not add or change other headers")


def _url_part(url: str, part: str) -> str:
    """netloc or path of a URL; "" for none or a malformed one (e.g. an unclosed `[`)."""
    try:
        return str(getattr(urlsplit(url), part)) if "://" in url else ""
    except ValueError:
        return ""


def _upstream_of(url: str) -> str | None:
    try:
        scheme = url.partition("://")[0]
        return None if "$" in url else parse_upstream(f"{scheme}://{_url_part(url, 'netloc')}")
    except ValueError:
        return None


def _proxy_target(out: _Out, d: Directive, path: str, url: str, passthrough: bool) -> None:
    """`path` -> `url`; regproxy forwards /v2 paths unchanged, so only host and port carry."""
    if url == "!":
        out.note(d, "not needed: regproxy proxies only /v2 and answers the rest itself")
        return
    if path.rstrip("/") not in ("", "/v2"):
        out.note(d, "regproxy proxies only /v2: this mapping is not translated")
        return
    target = _url_part(url, "path")
    if target.rstrip("/") != path.rstrip("/") and not (passthrough and not target):
        out.note(d, f"path rewrite {path} -> {target or '/'} not supported: paths stay as sent")
    upstream = _upstream_of(url)
    if upstream is None:
        out.note(d, "not an http(s)://host[:port] upstream regproxy can use")
    else:
        out.set("upstream", upstream, d)


_TLS_WHY = "regproxy has its own fixed TLS (1.2 and up, ECDHE key exchange, AEAD ciphers)"
_LOG_WHY = "regproxy logs to standard error and the access log (see log_level, access_log)"
_WHY = {
    "order": "mod_access_compat is not translated; Order alone restricts nothing",
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
    "if": "regproxy does not match requests on variables (such as the User-Agent)",
    **dict.fromkeys(("errorlog", "customlog", "logformat", "loglevel", "transferlog",
                     "error_log", "access_log", "log_format"), _LOG_WHY),
}  # fmt: skip
_QUIET = {  # directive -> the value that needs no note ("": any value)
    **dict.fromkeys(("loadmodule", "serverroot", "servername", "serveradmin", "user", "group",
                     "sslrandomseed", "allowoverride", "server_name", "events", "pid",
                     "worker_processes", "proxy_http_version", "ssl"), ""),
    "sslengine": "on", "authtype": "basic", "authbasicprovider": "file",
    "proxyrequests": "off", "proxypreservehost": "on", "client_max_body_size": "0",
    "chunked_transfer_encoding": "on", "proxy_buffering": "off",
    "proxy_request_buffering": "off",
}  # fmt: skip


def _other(out: _Out, d: Directive) -> None:
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


def _mask(d: Directive) -> frozenset[str]:
    """The methods a <Limit>, <LimitExcept> or limit_except block applies to (GET means HEAD)."""
    named = {m.upper() for m in d.args} | ({"HEAD"} if "GET" in map(str.upper, d.args) else set())
    return frozenset(named & ALL) if d.key == "limit" else ALL - named


# ---------------------------------------------------------------- Apache httpd
_APACHE_WORD = re.compile(r"\"((?:[^\"\\]|\\.)*)\"|'((?:[^'\\]|\\.)*)'|(\S+)")
_APACHE_PATHS = {"sslcertificatefile": "tls.cert", "sslcertificatekeyfile": "tls.key",
                 "authuserfile": "htpasswd", "authgroupfile": "groups"}  # fmt: skip


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Lines with `\\`-newline continuations joined, numbered by their first line."""
    start, parts = 0, list[str]()
    for number, raw in enumerate(text.splitlines(), start=1):
        start = start if parts else number
        parts.append(raw[:-1] if raw.endswith("\\") else raw)
        if not raw.endswith("\\"):
            yield start, "".join(parts)
            parts = []
    if parts:
        yield start, "".join(parts)


def _apache_words(line: str, source: str, number: int) -> list[str]:
    words = []
    for match in _APACHE_WORD.finditer(line):
        double, single, bare = match.groups()
        if bare is not None and bare[0] in "\"'":
            raise _error(source, number, "unterminated quoted string")
        if bare is not None:
            words.append(bare)
        else:
            quote = '"' if double is not None else "'"
            words.append((double if double is not None else single).replace("\\" + quote, quote))
    return words


def _apache_tree(text: str, source: str) -> tuple[Directive, ...]:
    stack: list[tuple[str, tuple[str, ...], int, list[Directive]]] = [("", (), 0, [])]
    for number, raw in _logical_lines(text):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("<") and not line.endswith(">"):
            raise _error(source, number, f"{line[:40]}: section tag without its closing '>'")
        if line.startswith("</"):
            name = line[2:-1].strip()
            if len(stack) == 1:
                raise _error(source, number, f"</{name}> without an opening <{name}>")
            opened, args, start, children = stack.pop()
            if name.lower() != opened.lower():
                raise _error(source, number, f"</{name}> closes <{opened}> of line {start}")
            section = Directive(opened, args, start, tuple(children), brackets=True)
            stack[-1][3].append(section)
        elif line.startswith("<"):
            words = _apache_words(line[1:-1], source, number)
            if not words or len(stack) > MAX_DEPTH:
                raise _error(source, number, "empty section tag or sections nested too deeply")
            stack.append((words[0], tuple(words[1:]), number, []))
        else:
            words = _apache_words(line, source, number)
            stack[-1][3].append(Directive(words[0], tuple(words[1:]), number))
    if len(stack) > 1:
        raise _error(source, stack[-1][2], f"<{stack[-1][0]}> is never closed")
    return tuple(stack[0][3])


class _Apache:
    """Walks httpd.conf. Require entries are kept per section: as with Apache's default
    `AuthMerging Off`, the innermost section that has any decides alone."""

    def __init__(self, out: _Out) -> None:
        self.out, self.vhost = out, False
        self.scopes: list[tuple[int, list[_Entry]]] = []
        self.reverse: list[Directive] = []

    def run(self, tree: tuple[Directive, ...]) -> None:
        self.section(tree, 0)
        scoped = [(depth, i) for i, (depth, entries) in enumerate(self.scopes) if entries]
        if scoped:
            self.out.entries = self.scopes[max(scoped)[1]][1]
        for d in self.reverse:
            if _upstream_of(d.args[-1] if d.args else "") != self.out.values.get("upstream"):
                self.out.note(d, "regproxy rewrites only its own upstream's Location headers")

    def section(self, block: tuple[Directive, ...], depth: int) -> None:
        entries: list[_Entry] = []
        self.scopes.append((depth, entries))
        self.walk(block, depth, None, entries)

    def walk(self, block: tuple[Directive, ...], depth: int, mask: frozenset[str] | None,
             entries: list[_Entry]) -> None:  # fmt: skip
        for d in block:
            if d.block is not None:
                self.enter(d, depth, mask, entries)
            elif d.key == "require":
                entries.append((mask or ALL, _require(self.out, d), False))
                self.out.policy_line = self.out.policy_line or d.line
            elif d.key in ("allow", "deny"):
                if d.key == "allow" and [a.lower() for a in d.args] == ["from", "all"]:
                    self.out.note(d, "mod_access_compat: Allow from all restricts nothing")
                else:
                    why = "address rules are not translated (acl networks: can express them)"
                    self.out.note(d, f"{why}: these methods are denied to everyone")
                    entries.append((mask or ALL, NOBODY, True))
            else:
                self.directive(d)

    def enter(self, d: Directive, depth: int, mask: frozenset[str] | None,
              entries: list[_Entry]) -> None:  # fmt: skip
        assert d.block is not None
        key, first = d.key, (d.args or ("",))[0]
        if key in ("limit", "limitexcept"):
            if mask is not None or not d.args:
                raise _error(self.out.source, d.line, f"{d}: nested, or without methods")
            self.walk(d.block, depth, _mask(d), entries)
        elif key in ("ifmodule", "ifdefine", "requireany") and not first.startswith("!"):
            self.walk(d.block, depth, mask, entries)
        elif key == "virtualhost" and not self.vhost:
            self.vhost = True
            self.section(d.block, depth + 1)
        elif key == "location" and len(d.args) == 1 and first.rstrip("/") in ("", "/v2"):
            self.section(d.block, depth + 1)
        elif key in ("requireall", "requirenone"):
            self.out.note(d, "not translated: counted as granting nobody")
            entries.append((mask or ALL, NOBODY, False))
        elif key in ("directory", "directorymatch", "files", "filesmatch"):
            self.out.note(d, "filesystem section: regproxy serves no files")
        elif key == "virtualhost":
            self.out.note(d, "only the first <VirtualHost> is translated")
        else:
            self.out.lost(d)

    def directive(self, d: Directive) -> None:
        out, key = self.out, d.key
        if key == "listen":
            _listen(out, d, "Apache")
        elif key in _APACHE_PATHS:
            _path(out, d, _APACHE_PATHS[key], "httpd")
        elif key == "authname":
            _realm(out, d)
        elif key == "proxypass":
            args = [a for a in d.args if "=" not in a or "://" in a]
            if len(args) < len(d.args):
                out.note(d, "connection parameters are not translated")
            path, url = (args[0], args[1]) if len(args) > 1 else ("/v2", (args or [""])[0])
            _proxy_target(out, d, path, url, passthrough=False)
        elif key == "proxypassreverse":
            self.reverse.append(d)
        elif key in ("header", "requestheader"):
            _header(out, d)
        else:
            _other(out, d)


def _require(out: _Out, d: Directive) -> Grant:
    kind, names = (d.args[0].lower() if d.args else ""), frozenset(d.args[1:])
    if kind == "valid-user":
        return VALID
    if kind == "all" and len(names) == 1:
        return ANYONE if {n.lower() for n in names} == {"granted"} else NOBODY
    if kind in ("user", "group") and names and not any(":" in n for n in names):
        return Grant(users=names) if kind == "user" else Grant(groups=names)
    why = "LDAP is not translated" if "ldap" in kind else "regproxy cannot express this"
    out.note(d, f"{why}: it grants nobody here")
    return NOBODY


# ---------------------------------------------------------------- nginx
_NG_TOKEN = re.compile(
    r"(?P<skip>\s+|#[^\n]*)|(?P<punct>[{};])|(?P<quoted>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')"
    r"|(?P<word>(?:\$\{[^}\s]*\}|[^\s{};\"'])+)",
    re.S,
)


def _nginx_tokens(text: str, source: str) -> Iterator[tuple[str, int, bool]]:
    """(token, line, is `{`/`}`/`;`); quotes removed, `\\"` `\\'` `\\\\` unescaped."""
    pos, line = 0, 1
    while pos < len(text):
        match = _NG_TOKEN.match(text, pos)
        if match is None:
            raise _error(source, line, "unterminated quoted string")
        kind, value = match.lastgroup, match.group()
        if kind == "quoted":
            yield re.sub(r"\\([\"'\\])", r"\1", value[1:-1]), line, False
        elif kind != "skip":
            yield value, line, kind == "punct"
        line, pos = line + value.count("\n"), match.end()


def _nginx_tree(text: str, source: str) -> tuple[Directive, ...]:
    stack: list[tuple[list[str], int, list[Directive]]] = [([], 0, [])]
    words: list[str] = []
    start = 0
    for token, line, punct in _nginx_tokens(text, source):
        if not punct:
            start = start if words else line
            words.append(token)
        elif words and token == "}":
            raise _error(source, start, f"{words[0]} is missing its ';' before '}}'")
        elif token == "}":
            if len(stack) == 1:
                raise _error(source, line, "unexpected '}': no block is open")
            head, opened, children = stack.pop()
            stack[-1][2].append(Directive(head[0], tuple(head[1:]), opened, tuple(children)))
        elif not words:
            raise _error(source, line, f"unexpected '{token}' without a directive name")
        elif token == ";":
            stack[-1][2].append(Directive(words[0], tuple(words[1:]), start))
            words = []
        elif len(stack) > MAX_DEPTH:
            raise _error(source, line, "blocks nested too deeply")
        else:
            stack.append((words, start, []))
            words = []
    if words:
        raise _error(source, start, f"unexpected end of file: {words[0]} is missing its ';'")
    if len(stack) > 1:
        raise _error(source, stack[-1][1], f"'{stack[-1][0][0]} {{' is never closed")
    return tuple(stack[0][2])


@dataclass(frozen=True)
class _NgAccess:
    """One level's auth_basic, auth_basic_user_file and allow/deny; None: inherited."""

    realm: Directive | None = None
    user_file: Directive | None = None
    address: tuple[Directive, ...] | None = None

    def under(self, child: _NgAccess) -> _NgAccess:
        address = self.address if child.address is None else child.address
        return _NgAccess(child.realm or self.realm, child.user_file or self.user_file, address)


def _location_path(d: Directive) -> str | None:
    """The /v2 prefix locations regproxy can stand for (`^~` allowed; `=`, regex are not)."""
    args = d.args[1:] if d.args[:1] == ("^~",) else d.args
    return args[0] if len(args) == 1 and args[0].rstrip("/") in ("", "/v2") else None


class _Nginx:
    """Walks nginx.conf: http, server, location and limit_except, with nginx's inheritance."""

    def __init__(self, out: _Out) -> None:
        self.out, self.main_file = out, ""
        self.upstreams: dict[str, str] = {}
        self.servers: list[Directive] = []

    def run(self, tree: tuple[Directive, ...]) -> None:
        self.top(tree)
        if not self.servers:
            raise _error(self.out.source, 0, "no server block: nothing to import")
        server = next((s for s in self.servers if _contains(s, {"proxy_pass"})), self.servers[0])
        for other in self.servers:
            if other is not server:
                self.out.note(other, "only one server block is translated")
        self.server(server)

    def top(self, block: tuple[Directive, ...]) -> None:
        for d in block:
            if d.key == "http" and d.block is not None:
                self.top(d.block)
            elif d.key == "server" and d.block is not None:
                self.servers.append(d)
            elif d.key == "upstream" and d.block is not None and d.args:
                self.upstream(d, [c for c in d.block if c.key == "server" and c.args])
            elif d.key in _ACCESS_KEYS or d.key.startswith("auth_"):
                self.out.deny_all = True
                self.out.note(d, "access rules outside a server are not translated: the acl "
                              "denies all")  # fmt: skip
            else:
                _other(self.out, d)

    def upstream(self, d: Directive, servers: list[Directive]) -> None:
        if len(servers) > 1:
            self.out.note(servers[1], "regproxy has one upstream: the first server is used")
        if servers and not servers[0].args[0].startswith("unix:"):
            self.upstreams[d.args[0]] = servers[0].args[0]
        else:
            self.out.note(d, "no TCP server in this upstream: not translated")

    def server(self, server: Directive) -> None:
        access, locations, _ = self.level(server, "/")
        paths = {d: p for d in locations if (p := _location_path(d)) is not None}
        chosen = max(paths, key=lambda d: len(paths[d]), default=None)
        for d in locations:
            if d is not chosen:
                self.out.lost(d)
        limits: list[Directive] = []
        if chosen is not None:
            inner, nested, limits = self.level(chosen, paths[chosen])
            access = access.under(inner)
            for d in nested + limits[1:]:
                self.out.lost(d)
        self.decide(access, limits[:1])

    def level(self, d: Directive, path: str) -> tuple[_NgAccess, list[Directive], list[Directive]]:
        """One block's access directives and sub-blocks; settings go straight to the output."""
        found: dict[str, Directive] = {}
        address: list[Directive] | None = None
        locations, limits = list[Directive](), list[Directive]()
        for c in d.block or ():
            if c.key in ("location", "limit_except") and c.block is not None:
                (locations if c.key == "location" else limits).append(c)
            elif c.key in ("auth_basic", "auth_basic_user_file"):
                found[c.key] = c
                self.out.policy_line = self.out.policy_line or c.line
            elif c.key in ("allow", "deny"):
                address = [*(address or []), c]
                if c.args != ("all",):
                    self.out.note(c, "address rules are not translated (acl networks: can "
                                  "express them): counted as deny all")  # fmt: skip
            elif c.key.startswith("auth_") or c.key == "satisfy":
                self.out.deny_all = True
                self.out.note(c, "only Basic auth with one htpasswd file is translated: the acl "
                              "denies all")  # fmt: skip
            elif c.block is not None:
                self.out.lost(c)
            else:
                self.directive(c, path)
        access = _NgAccess(found.get("auth_basic"), found.get("auth_basic_user_file"),
                           None if address is None else tuple(address))  # fmt: skip
        return access, locations, limits

    def directive(self, d: Directive, path: str) -> None:
        out, key = self.out, d.key
        if key == "listen":
            _listen(out, d, "nginx")
            if not set(d.args[1:]) <= {"ssl", "default_server"}:
                out.note(d, "regproxy always serves TLS over HTTP/1.1; other flags ignored")
        elif key in ("ssl_certificate", "ssl_certificate_key"):
            _path(out, d, "tls.cert" if key == "ssl_certificate" else "tls.key", "nginx")
        elif key == "proxy_pass":
            url = (d.args or ("",))[0]
            name = _url_part(url, "netloc")
            url = url.replace(name, self.upstreams[name], 1) if name in self.upstreams else url
            _proxy_target(out, d, path, url, passthrough=True)
        elif key in ("add_header", "proxy_set_header", "more_set_headers"):
            _header(out, d)
        else:
            _other(out, d)

    def decide(self, access: _NgAccess, limits: list[Directive]) -> None:
        """limit_except applies its own block to every method it does not name."""
        if not limits:
            self.out.entries.append((ALL, self.grant(access), False))
            return
        inner, nested, more = self.level(limits[0], "/")
        for d in nested + more:
            self.out.lost(d)
        methods = _mask(limits[0])
        self.out.entries.append((ALL - methods, self.grant(access), False))
        self.out.entries.append((methods, self.grant(access.under(inner)), False))

    def grant(self, access: _NgAccess) -> Grant:
        """allow/deny first (first match wins; an address rule counts as deny), then Basic."""
        rule = (access.address or (None,))[0]
        if rule is not None and (rule.key == "deny" or rule.args != ("all",)):
            return NOBODY
        if access.realm is None or access.realm.args[:1] == ("off",):
            return ANYONE
        if access.user_file is None or len(access.user_file.args) != 1:
            self.out.note(access.realm, "no auth_basic_user_file: nobody can log in")
            return NOBODY
        if not self.main_file:
            self.main_file = access.user_file.args[0]
            _path(self.out, access.user_file, "htpasswd", "nginx")
            _realm(self.out, access.realm)
        if access.user_file.args[0] == self.main_file:
            return VALID
        self.out.note(access.user_file, f"a second user file: regproxy has one ({self.main_file})."
                      " Merge them, list these users in a group and set push_group; until "
                      "then these methods are denied to everyone")  # fmt: skip
        return NOBODY


# ---------------------------------------------------------------- policy and output
def _per_method(entries: list[_Entry]) -> dict[str, Grant]:
    """No rule for a method lets anyone use it; an address rule denies it; else any suffices."""
    result = {}
    for method in METHODS:
        covering = [(grant, blocked) for methods, grant, blocked in entries if method in methods]
        blocked = any(b for _, b in covering)
        grants = [g for g, _ in covering] or [ANYONE]
        result[method] = NOBODY if blocked else reduce(lambda a, b: a | b, grants)
    return result


def _actions(actions: set[Action] | frozenset[Action]) -> object:
    return "*" if set(actions) == set(ACTIONS) else [a for a in ACTIONS if a in actions]


def _rules(grants: dict[Action, Grant], out: _Out) -> list[dict[str, object]]:
    """First match wins, so the rules with more actions come first; two named rules with
    unrelated action sets cannot add up for a user who matches both: that is a note."""
    anonymous = {a for a, g in grants.items() if g.anyone}
    valid = {a for a, g in grants.items() if g.any_valid}
    named: dict[tuple[str, str], set[Action]] = {}
    for action, grant in grants.items():
        for kind, grantees in (("users", grant.users), ("groups", grant.groups)):
            for name in grantees:
                named.setdefault((kind, name), set(valid)).add(action)
    merged: dict[tuple[str, frozenset[Action]], list[str]] = {}
    for (kind, name), granted in sorted(named.items()):
        if granted != valid:
            merged.setdefault((kind, frozenset(granted)), []).append(name)
    ordered = sorted(merged.items(), key=lambda i: (-len(i[0][1]), i[0][0], sorted(i[0][1])))
    for n, ((kind, actions), names) in enumerate(ordered):
        for (other_kind, other), other_names in ordered[n + 1 :]:
            if not other <= actions and "groups" in (kind, other_kind):
                out.note(out.policy_line, f"a user matching both {kind} {names} and "
                         f"{other_kind} {other_names} gets only {sorted(actions)}: regproxy "
                         "rules do not add up")  # fmt: skip
    rules: list[dict[str, object]] = []
    if anonymous:
        rules.append({"anonymous": True, "actions": _actions(anonymous)})
    rules += [{kind: names, "actions": _actions(actions)} for (kind, actions), names in ordered]
    return [*rules, {"actions": _actions(valid)}] if valid else rules or [{"actions": []}]


_WRITES: tuple[Action, ...] = ("push", "delete")


def _policy(out: _Out) -> None:
    """Per-method grants -> `push_group` when it is the recipe's shape, else an inline acl."""
    per_method = _per_method(out.entries)
    grants: dict[Action, Grant] = {}
    for action, methods in _ACTION_METHODS.items():
        found = [per_method[m] for m in methods]
        if len(set(found)) > 1:
            out.note(out.policy_line, f"{'/'.join(methods)} are not treated alike: regproxy "
                     f"decides per action ({action}) and the stricter applies")  # fmt: skip
        grants[action] = reduce(lambda a, b: a & b, found)
    opened = [a for a in _WRITES if grants[a].anyone]
    if opened:
        out.note(out.policy_line, f"{' and '.join(opened)} need no credentials in the source; "
                 "regproxy never lets anonymous clients write: any valid user may")  # fmt: skip
        grants.update({a: replace(grants[a], anyone=False, valid=True) for a in opened})
    if writers := [a for a in _WRITES if grants[a].valid and a not in opened]:
        out.note(out.policy_line, f"any valid user may {' and '.join(writers)}: no group or "
                 "user list restricts it in the source")  # fmt: skip
    rules = _rules(grants, out)
    if out.deny_all:
        out.note(out.policy_line, "the access policy cannot be expressed: the acl denies "
                 "everything until you write rules like conf/acl/*.yaml")  # fmt: skip
        rules = [{"actions": []}]
    groups = rules[0].get("groups")
    recipe = rules == [{"groups": groups, "actions": "*"}, {"actions": ["pull"]}]
    if recipe and isinstance(groups, list) and len(groups) == 1:
        out.values["push_group"] = groups[0]
        rules = []
    out.acl = rules
    uses_groups = any("groups" in r for r in rules) or "push_group" in out.values
    if uses_groups and "groups" not in out.values:
        out.note(out.policy_line, "groups are used but no group file is named: regproxy "
                     "reads the `groups` file (default conf/groups)")  # fmt: skip


_ORDER = ("listen", "upstream", "htpasswd", "groups", "push_group", "realm")
_PLAIN = re.compile(r"[A-Za-z0-9_./$]([A-Za-z0-9_./:@+$ -]*[A-Za-z0-9_./@+$-])?")


def _scalar(value: str) -> str:
    """Plain when YAML reads it back as the same string, in a mapping and in a flow list."""
    if _PLAIN.fullmatch(value):
        try:
            if yaml.safe_load(f"a: {value}\nb: [{value}]") == {"a": value, "b": [value]}:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value)  # ASCII-escaped JSON is a valid YAML double-quoted scalar


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(str(v)) for v in value) + "]"
    return _scalar(str(value))


def _render(out: _Out, notes: list[Problem]) -> str:
    values = out.values
    lines = [f"# Imported from {_printable(out.source)} by `regproxy import`. Review it first;",
             "# keys left out keep their defaults (see conf/regproxy.reference.yaml)."]  # fmt: skip
    lines += [f"{key}: {_scalar(values[key])}" for key in _ORDER if key in values]
    tls = [f"  {sub}: {_scalar(values['tls.' + sub])}" for sub in ("cert", "key")
           if "tls." + sub in values]  # fmt: skip
    lines += ["tls:", *tls] if tls else []
    lines += ["acl:"] if out.acl else []
    for rule in out.acl:
        for n, (key, value) in enumerate(rule.items()):
            lines.append(f"{'  - ' if n == 0 else '    '}{key}: {_value(value)}")
    if notes:
        lines += ["", "# Not translated (also reported on standard error):"]
        lines += [f"#   {_printable(str(note))}" for note in notes]
    return "\n".join(lines) + "\n"


_APACHE_HINT = re.compile(
    r"^[ \t]*(?:</?(?:virtualhost|location|limit|limitexcept|ifmodule|directory)\b|(?:listen|"
    r"loadmodule|proxypass|authuserfile|authgroupfile|authname|sslcertificatefile|serverroot|"
    r"require)[ \t][^;{}\n]*$)",
    re.I | re.M,
)
_NGINX_HINT = re.compile(r"^[ \t]*(?:[a-z_]+\b[^#\n]*[;{]|\})[ \t]*(?:#.*)?$", re.M)
_BINARY = re.compile(r"[\x00-\x08\x0e-\x1f\ufffd]")


def _kind(text: str, source: str) -> str:
    """Apache or nginx, by which one's line shapes dominate; refuse binary, empty, neither."""
    if bad := _BINARY.search(text):
        raise _error(source, text.count("\n", 0, bad.start()) + 1, "binary data, not a config")
    if all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
        raise _error(source, 0, "empty: no directives to import")
    apache, nginx = len(_APACHE_HINT.findall(text)), len(_NGINX_HINT.findall(text))
    if apache == nginx:
        raise _error(source, 0, "neither an Apache httpd.conf nor an nginx configuration")
    return "apache" if apache > nginx else "nginx"


def import_config(text: str, source: str) -> Imported:
    """Translate an httpd.conf or nginx config; `source` names it in notes and errors."""
    out = _Out(source)
    if _kind(text, source) == "apache":
        _Apache(out).run(_apache_tree(text, source))
    else:
        _Nginx(out).run(_nginx_tree(text, source))
    if "upstream" not in out.values:
        out.note(0, "no proxy target for /v2 found: upstream keeps its default")
    if "tls.cert" not in out.values or "tls.key" not in out.values:
        out.note(0, "no certificate or key found: regproxy always serves TLS (tls.cert/tls.key)")
    _policy(out)
    notes = sorted(out.notes, key=lambda p: p.line)
    return Imported(_render(out, notes), tuple(notes))
