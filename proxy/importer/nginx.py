"""nginx.conf for `proxy.importer`: tokenizer and the walk over http, upstream, server,
location and limit_except, with nginx's semantics. Pure."""

# Kept from nginx: auth_basic, auth_basic_user_file and allow/deny are inherited unless an
# inner block sets its own; allow/deny come first, first match wins; limit_except applies to
# the methods it does not name (GET implies HEAD).

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from .base import (
    ACCESS_KEYS,
    ALL,
    ANYONE,
    MAX_DEPTH,
    NOBODY,
    VALID,
    Directive,
    Grant,
    Out,
    contains,
    error,
    method_mask,
    note_header,
    note_other,
    set_listens,
    set_path,
    set_realm,
    set_upstream,
    url_part,
)

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
            raise error(source, line, "unterminated quoted string")
        kind, value = match.lastgroup, match.group()
        if kind == "quoted":
            yield re.sub(r"\\([\"'\\])", r"\1", value[1:-1]), line, False
        elif kind != "skip":
            yield value, line, kind == "punct"
        line, pos = line + value.count("\n"), match.end()


def nginx_tree(text: str, source: str) -> tuple[Directive, ...]:
    stack: list[tuple[list[str], int, list[Directive]]] = [([], 0, [])]
    words: list[str] = []
    start = 0
    for token, line, punct in _nginx_tokens(text, source):
        if not punct:
            start = start if words else line
            words.append(token)
        elif words and token == "}":
            raise error(source, start, f"{words[0]} is missing its ';' before '}}'")
        elif token == "}":
            if len(stack) == 1:
                raise error(source, line, "unexpected '}': no block is open")
            head, opened, children = stack.pop()
            stack[-1][2].append(Directive(head[0], tuple(head[1:]), opened, tuple(children)))
        elif not words:
            raise error(source, line, f"unexpected '{token}' without a directive name")
        elif token == ";":
            stack[-1][2].append(Directive(words[0], tuple(words[1:]), start))
            words = []
        elif len(stack) > MAX_DEPTH:
            raise error(source, line, "blocks nested too deeply")
        else:
            stack.append((words, start, []))
            words = []
    if words:
        raise error(source, start, f"unexpected end of file: {words[0]} is missing its ';'")
    if len(stack) > 1:
        raise error(source, stack[-1][1], f"'{stack[-1][0][0]} {{' is never closed")
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


class NginxWalk:
    """Walks nginx.conf: http, server, location and limit_except, with nginx's inheritance."""

    def __init__(self, out: Out) -> None:
        self.out, self.main_file = out, ""
        self.upstreams: dict[str, str] = {}
        self.servers: list[Directive] = []
        self.listens: list[Directive] = []

    def run(self, tree: tuple[Directive, ...]) -> None:
        self.top(tree)
        if not self.servers:
            raise error(self.out.source, 0, "no server block: nothing to import")
        server = next((s for s in self.servers if contains(s, {"proxy_pass"})), self.servers[0])
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
            elif d.key in ACCESS_KEYS or d.key.startswith("auth_"):
                self.out.deny_all = True
                self.out.note(
                    d, "access rules outside a server are not translated: the acl denies all"
                )
            else:
                note_other(self.out, d)

    def upstream(self, d: Directive, servers: list[Directive]) -> None:
        if len(servers) > 1:
            self.out.note(servers[1], "regproxy has one upstream: the first server is used")
        if servers and not servers[0].args[0].startswith("unix:"):
            self.upstreams[d.args[0]] = servers[0].args[0]
        else:
            self.out.note(d, "no TCP server in this upstream: not translated")

    def server(self, server: Directive) -> None:
        access, locations, misplaced = self.level(server, "/")
        listens = sorted(self.listens, key=lambda d: "ssl" not in d.args[1:])
        set_listens(self.out, listens, "nginx")
        if listens and "ssl" not in listens[0].args[1:]:
            why = "plain HTTP in nginx: regproxy always serves TLS"
            self.out.note(listens[0], why, translated=True)
        elif listens and not set(listens[0].args[1:]) <= {"ssl", "default_server"}:
            why = "regproxy serves HTTP/1.1 over TLS: other flags ignored"
            self.out.note(listens[0], why, translated=True)
        for d in misplaced:
            self.out.lost(d)
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
                    self.out.note(
                        c,
                        "address rules are not translated (acl networks: can "
                        "express them): counted as deny all",
                    )
            elif c.key.startswith("auth_"):
                self.out.deny_all = True
                self.out.note(
                    c, "only Basic auth with one htpasswd file is translated: the acl denies all"
                )
            elif c.block is not None:
                self.out.lost(c)
            else:
                self.directive(c, path)
        access = _NgAccess(
            found.get("auth_basic"),
            found.get("auth_basic_user_file"),
            None if address is None else tuple(address),
        )
        return access, locations, limits

    def directive(self, d: Directive, path: str) -> None:
        out, key = self.out, d.key
        if key == "listen":
            self.listens.append(d)
        elif key in ("ssl_certificate", "ssl_certificate_key"):
            set_path(out, d, "tls.cert" if key == "ssl_certificate" else "tls.key", "nginx")
        elif key == "proxy_pass":
            url = (d.args or ("",))[0]
            name = url_part(url, "netloc")
            url = url.replace(name, self.upstreams[name], 1) if name in self.upstreams else url
            set_upstream(out, d, path, url, passthrough=True)
        elif key in ("add_header", "proxy_set_header", "more_set_headers"):
            note_header(out, d)
        else:
            note_other(out, d)

    def decide(self, access: _NgAccess, limits: list[Directive]) -> None:
        """limit_except applies its own block to every method it does not name."""
        if not limits:
            self.out.entries.append((ALL, self.grant(access), False))
            return
        inner, nested, more = self.level(limits[0], "/")
        for d in nested + more:
            self.out.lost(d)
        methods = method_mask(limits[0])
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
            set_path(self.out, access.user_file, "htpasswd", "nginx")
            set_realm(self.out, access.realm)
        if access.user_file.args[0] == self.main_file:
            return VALID
        self.out.note(
            access.user_file,
            f"a second user file: regproxy has one ({self.main_file})."
            " Merge them, list these users in a group and set push_group; until "
            "then these methods are denied to everyone",
        )
        return NOBODY
