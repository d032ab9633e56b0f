"""Apache httpd.conf for `proxy.importer`: tokenizer and the walk that records settings and
Require rules, with Apache's semantics. Pure."""

# Kept from Apache: <Limit>/<LimitExcept> restrict Require to methods (GET implies HEAD);
# several Require lines mean any of them; with `AuthMerging Off` the innermost section with
# Require lines decides alone; a method no Require covers needs no credentials.

from __future__ import annotations

import re
from collections.abc import Iterator

from .base import (
    ALL,
    ANYONE,
    MAX_DEPTH,
    NAME_RE,
    NOBODY,
    VALID,
    Directive,
    Entry,
    Grant,
    Out,
    error,
    method_mask,
    note_header,
    note_other,
    set_listens,
    set_path,
    set_realm,
    set_upstream,
    upstream_of,
)

_APACHE_WORD = re.compile(r"\"((?:[^\"\\]|\\.)*)\"|'((?:[^'\\]|\\.)*)'|(\S+)")
_APACHE_PATHS = {
    "sslcertificatefile": "tls.cert",
    "sslcertificatekeyfile": "tls.key",
    "authuserfile": "htpasswd",
    "authgroupfile": "groups",
}


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
            raise error(source, number, "unterminated quoted string")
        if bare is not None:
            words.append(bare)
        else:
            quote = '"' if double is not None else "'"
            words.append((double if double is not None else single).replace("\\" + quote, quote))
    return words


def apache_tree(text: str, source: str) -> tuple[Directive, ...]:
    stack: list[tuple[str, tuple[str, ...], int, list[Directive]]] = [("", (), 0, [])]
    for number, raw in _logical_lines(text):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("<") and not line.endswith(">"):
            raise error(source, number, f"{line[:40]}: section tag without its closing '>'")
        if line.startswith("</"):
            name = line[2:-1].strip()
            if len(stack) == 1:
                raise error(source, number, f"</{name}> without an opening <{name}>")
            opened, args, start, children = stack.pop()
            if name.lower() != opened.lower():
                raise error(source, number, f"</{name}> closes <{opened}> of line {start}")
            section = Directive(opened, args, start, tuple(children), brackets=True)
            stack[-1][3].append(section)
        elif line.startswith("<"):
            words = _apache_words(line[1:-1], source, number)
            if not words or len(stack) > MAX_DEPTH:
                raise error(source, number, "empty section tag or sections nested too deeply")
            stack.append((words[0], tuple(words[1:]), number, []))
        else:
            words = _apache_words(line, source, number)
            stack[-1][3].append(Directive(words[0], tuple(words[1:]), number))
    if len(stack) > 1:
        raise error(source, stack[-1][2], f"<{stack[-1][0]}> is never closed")
    return tuple(stack[0][3])


class ApacheWalk:
    """Walks httpd.conf. Require entries are kept per section: as with Apache's default
    `AuthMerging Off`, the innermost section that has any decides alone."""

    def __init__(self, out: Out) -> None:
        self.out, self.vhost = out, False
        self.scopes: list[tuple[int, list[Entry]]] = []
        self.reverse: list[Directive] = []
        self.listens: list[Directive] = []
        self.ports: set[str] = set()  # of the translated <VirtualHost>

    def run(self, tree: tuple[Directive, ...]) -> None:
        self.section(tree, 0)

        def elsewhere(listen: Directive) -> bool:  # not the port of the translated VirtualHost
            return (listen.args or ("",))[0].rpartition(":")[2] not in self.ports

        set_listens(self.out, sorted(self.listens, key=elsewhere), "Apache")
        scoped = [(depth, i) for i, (depth, entries) in enumerate(self.scopes) if entries]
        if scoped:
            self.out.entries = self.scopes[max(scoped)[1]][1]
        for d in self.reverse:
            if upstream_of(d.args[-1] if d.args else "") != self.out.values.get("upstream"):
                self.out.note(d, "regproxy rewrites only its own upstream's Location headers")

    def section(self, block: tuple[Directive, ...], depth: int) -> None:
        entries: list[Entry] = []
        self.scopes.append((depth, entries))
        self.walk(block, depth, None, entries)

    def walk(
        self,
        block: tuple[Directive, ...],
        depth: int,
        mask: frozenset[str] | None,
        entries: list[Entry],
    ) -> None:
        for d in block:
            if d.block is not None:
                self.enter(d, depth, mask, entries)
            elif d.key == "require":
                entries.append((mask or ALL, _require(self.out, d), False))
                self.out.policy_line = self.out.policy_line or d.line
            elif d.key in ("order", "allow", "deny"):
                self.access_compat(d, block, mask or ALL, entries)
            else:
                self.directive(d)

    def access_compat(
        self, d: Directive, block: tuple[Directive, ...], mask: frozenset[str], entries: list[Entry]
    ) -> None:
        """Order/Allow/Deny: harmless as the recipe writes them; any real address rule, or an
        `Order allow,deny` that nothing allows, denies these methods to everyone."""
        words = "".join(d.args).lower()
        allow_all = any(s.key == "allow" and "".join(s.args).lower() == "fromall" for s in block)
        if (d.key == "allow" and words == "fromall") or (
            d.key == "order" and (words == "deny,allow" or (words == "allow,deny" and allow_all))
        ):
            self.out.note(d, "mod_access_compat is not translated; here it restricts nothing")
        else:
            self.out.note(
                d,
                "address rules are not translated (acl networks: can express "
                "them): these methods are denied to everyone",
            )
            entries.append((mask, NOBODY, True))

    def enter(
        self, d: Directive, depth: int, mask: frozenset[str] | None, entries: list[Entry]
    ) -> None:
        assert d.block is not None
        key, first = d.key, (d.args or ("",))[0]
        if key in ("limit", "limitexcept"):
            if mask is not None or not d.args:
                raise error(self.out.source, d.line, f"{d}: nested, or without methods")
            self.walk(d.block, depth, method_mask(d), entries)
        elif key in ("ifmodule", "ifdefine", "requireany") and not first.startswith("!"):
            self.walk(d.block, depth, mask, entries)
        elif key == "virtualhost" and not self.vhost:
            self.vhost = True
            self.ports = {address.rpartition(":")[2] for address in d.args}
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
            self.listens.append(d)
        elif key in _APACHE_PATHS:
            set_path(out, d, _APACHE_PATHS[key], "httpd")
        elif key == "authname":
            set_realm(out, d)
        elif key == "proxypass":
            args = [a for a in d.args if "=" not in a or "://" in a]
            if len(args) < len(d.args):
                out.note(d, "connection parameters are not translated")
            path, url = (args[0], args[1]) if len(args) > 1 else ("/v2", (args or [""])[0])
            set_upstream(out, d, path, url, passthrough=False)
        elif key == "proxypassreverse":
            self.reverse.append(d)
        elif key in ("header", "requestheader"):
            note_header(out, d)
        else:
            note_other(out, d)


def _require(out: Out, d: Directive) -> Grant:
    kind, names = (d.args[0].lower() if d.args else ""), frozenset(d.args[1:])
    if kind == "valid-user":
        return VALID
    if kind == "all" and len(names) == 1:
        return ANYONE if {n.lower() for n in names} == {"granted"} else NOBODY
    if kind in ("user", "group") and names:
        usable = frozenset(n for n in names if NAME_RE.fullmatch(n))
        if usable != names:
            out.note(d, f"names with spaces or ':' cannot be regproxy {kind}s: left out")
        return Grant(users=usable) if kind == "user" else Grant(groups=usable)
    why = "LDAP is not translated" if "ldap" in kind else "regproxy cannot express this"
    out.note(d, f"{why}: it grants nobody here")
    return NOBODY
