"""The `oidc:` section: which workload-token issuers are trusted, and how a token's claims become
an identity, every problem with its line. Pure but for checking the CA files."""

#   oidc:
#     basic_user: oidc          # the Basic user name that carries a token; default: any
#     clock_skew: 60            # seconds of leeway on exp, nbf and iat (at most 300)
#     timeout: 5                # seconds for the issuer to answer (discovery, JWKS)
#     jwks_refresh: 3600        # seconds the issuer's keys are used before a new fetch
#     jwks_min_interval: 10     # at most one fetch per issuer this often (unknown `kid`s)
#     jwks_max_size: 1048576    # bytes a discovery document or key set may have
#     token_cache_ttl: 3600     # seconds a verified token is remembered at most (0: never)
#     token_cache_size: 10000   # verified tokens remembered per issuer and worker
#     issuers:
#       - issuer: https://token.actions.githubusercontent.com   # exactly the tokens' `iss`
#         audience: https://registry.example.org   # or a list: `aud` must hold one
#         # jwks_uri: https://...                  # default: from OIDC discovery
#         # ca_file: issuer-ca.pem                 # default: the system CAs
#         user: "ci:{repository}"        # a template, or a claim name
#         groups: {repository_owner: "github:"}    # claim -> prefix: "github:acme"
#         required: {repository_owner: acme}      # globs that must all hold
#
# Names and groups from tokens are the issuer's: each issuer gets a prefix of its own (`ci:`).
# A name without `:` is refused and groups without one are dropped (no password user or
# group file's group has one); two issuers that could make the same name are a problem.

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from ..core.lastgood import LastGood
from ..core.problems import BadValue, Problem, construct
from ..core.values import file_path, keyed, name, seconds, strings, whole_number
from ..policy.acl import claim_conditions
from ..policy.claims import CLAIM_NAME_RE, Conditions, template_names

MAX_SKEW = 300.0
MAX_DOCUMENT = 16 * 1024 * 1024
MAX_CACHE = 1_000_000


@dataclass(frozen=True)
class IssuerSettings:
    """One trusted issuer. `origin` is where it is configured (`file:line`)."""

    issuer: str
    audiences: tuple[str, ...]
    user: str
    jwks_uri: str | None = None
    ca_file: Path | None = None
    ca_pem: str | None = field(default=None, repr=False)  # its contents: a change is a change
    groups: tuple[tuple[str, str], ...] = ()  # (claim, prefix)
    required: Conditions = ()
    origin: str = ""


@dataclass(frozen=True)
class OidcSettings:
    """The `oidc:` section, validated by `parse_oidc_settings`."""

    issuers: tuple[IssuerSettings, ...]
    basic_user: str | None = None
    clock_skew: float = 60.0
    timeout: float = 5.0
    jwks_refresh: float = 3600.0
    jwks_min_interval: float = 10.0
    jwks_max_size: int = 1024 * 1024
    token_cache_ttl: float = 3600.0
    token_cache_size: int = 10_000

    def issuer(self, iss: str) -> IssuerSettings | None:
        return next((i for i in self.issuers if i.issuer == iss), None)

    def ca_files(self) -> tuple[Path, ...]:
        return tuple(i.ca_file for i in self.issuers if i.ca_file is not None)


_strings = keyed(strings)
_seconds = keyed(seconds)
_count = keyed(whole_number)
_name = keyed(name)
_path = keyed(file_path)


def _https(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.isprintable():
        raise BadValue(f"{key}: expected an https:// URL, got {value!r}")
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        raise BadValue(f"{key}: expected an https:// URL without query or fragment, got {value!r}")
    return value


def _texts(value: Any, key: str) -> tuple[str, ...]:
    return _strings(value, key, "string")


def _template(value: Any, key: str) -> str:
    if not isinstance(value, str) or template_names(value) is None:
        raise BadValue(
            f"{key}: expected a claim name or a template like 'ci:{{repository}}', got {value!r}"
        )
    return value


def _groups(value: Any, key: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not value:
        raise BadValue(f"{key}: expected a mapping of claim names to group prefixes")
    pairs = []
    for claim, prefix in value.items():
        if not isinstance(claim, str) or not CLAIM_NAME_RE.fullmatch(claim):
            raise BadValue(f"{key}: invalid claim name {claim!r}")
        if prefix is None:
            prefix = ""
        if not isinstance(prefix, str) or any(c.isspace() for c in prefix):
            raise BadValue(
                f"{key}: {claim}: expected a prefix without spaces (or ''), got {prefix!r}"
            )
        pairs.append((claim, prefix))
    return tuple(pairs)


def _ca_file(value: Any, key: str, base: Path, files: LastGood) -> tuple[Path, str]:
    """The path and its PEM text, which must hold a usable CA certificate (at a reload, one
    that does not keeps its last good text)."""
    path = _path(value, key, base)
    return path, files.read("oidc CA", path, lambda path: _ca_pem(path, key))


def _ca_pem(path: Path, key: str) -> str:
    """The PEM text of a file that holds a usable CA certificate; BadValue otherwise."""
    try:
        pem = path.read_text(encoding="ascii")
        ssl.create_default_context(cadata=pem)
    except FileNotFoundError:
        raise BadValue(f"{key}: no such file: {path}") from None
    except UnicodeDecodeError:
        raise BadValue(f"{key}: {path} is not a PEM file") from None
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise BadValue(f"{key}: no usable CA certificate in {path}: {reason}") from None
    return pem


_SECTION: dict[str, Callable[[Any, str], Any]] = {
    "basic_user": lambda v, k: _name(v, k, "user name"),
    "clock_skew": lambda v, k: _seconds(v, k, high=MAX_SKEW, zero=True),
    "timeout": lambda v, k: _seconds(v, k, high=60),
    "jwks_refresh": lambda v, k: _seconds(v, k, high=86_400),
    "jwks_min_interval": lambda v, k: _seconds(v, k, high=3600),
    "jwks_max_size": lambda v, k: _count(v, k, 1024, MAX_DOCUMENT),
    "token_cache_ttl": lambda v, k: _seconds(v, k, high=86_400, zero=True),
    "token_cache_size": lambda v, k: _count(v, k, 1, MAX_CACHE),
}
_ISSUER: dict[str, Callable[[Any, str], Any]] = {
    "issuer": _https,
    "audience": _texts,
    "jwks_uri": _https,
    "user": _template,
    "groups": _groups,
    "required": claim_conditions,
}
_ISSUER_KEYS = (*_ISSUER, "ca_file")


def _entries(node: yaml.Node, where: str, source: str, problems: list[Problem]
             ) -> dict[str, tuple[yaml.Node, int]]:  # fmt: skip
    """A mapping node's {key: (value node, line)}; duplicate keys are problems."""
    if not isinstance(node, yaml.MappingNode):
        problems.append(Problem(source, node.start_mark.line + 1, f"{where}: expected a mapping"))
        return {}
    entries: dict[str, tuple[yaml.Node, int]] = {}
    for key_node, value_node in node.value:
        key, line = str(key_node.value), key_node.start_mark.line + 1
        if key in entries:
            problems.append(Problem(source, line, f"{where}: duplicate key {key!r}"))
        else:
            entries[key] = (value_node, line)
    return entries


def _issuer(
    node: yaml.Node, source: str, base: Path, problems: list[Problem], files: LastGood
) -> IssuerSettings | None:
    line = node.start_mark.line + 1
    entries = _entries(node, "oidc.issuers", source, problems)
    values: dict[str, Any] = {}
    ok = bool(entries)
    for key, (value_node, key_line) in entries.items():
        name = f"oidc.issuers.{key}"
        try:
            if key not in _ISSUER_KEYS:
                raise BadValue(f"unknown key {name!r} (known: {', '.join(sorted(_ISSUER_KEYS))})")
            value = construct(value_node)
            if key == "ca_file":
                values["ca_file"], values["ca_pem"] = _ca_file(value, name, base, files)
            else:
                values[key] = _ISSUER[key](value, name)
        except ValueError as exc:
            problems.append(Problem(source, key_line, str(exc)))
            ok = False
    missing = [k for k in ("issuer", "audience", "user") if k not in entries]
    if missing:
        problems.append(Problem(source, line, f"oidc.issuers: missing {', '.join(missing)}"))
        return None
    if not ok:
        return None
    audiences = values.pop("audience")
    return IssuerSettings(audiences=audiences, origin=f"{source}:{line}", **values)


def name_prefix(template: str) -> str:
    """The literal text every name a user template makes starts with."""
    return template.partition("{")[0] if "{" in template else ""


def _overlap(a: str, b: str) -> bool:
    """Whether texts starting with `a` and texts starting with `b` can be the same."""
    return a.startswith(b) or b.startswith(a)


def _clashes(first: IssuerSettings, second: IssuerSettings) -> list[str]:
    """How `second` could make names or groups of `first`: a token of one issuer would pass
    for an identity of the other."""
    found = []
    if _overlap(name_prefix(first.user), name_prefix(second.user)):
        found.append(
            f"oidc.issuers.user: {second.user!r} can make the same names as {first.user!r}"
            f" ({first.issuer}): give each issuer a prefix of its own"
        )
    for _, prefix in second.groups:
        other = next((p for _, p in first.groups if _overlap(p, prefix)), None)
        if other is not None:
            found.append(
                f"oidc.issuers.groups: prefix {prefix!r} can make the same groups as"
                f" {other!r} ({first.issuer}): give each issuer a prefix of its own"
            )
    return found


def parse_oidc_settings(
    node: yaml.Node, source: str, line: int, base: Path, files: LastGood | None = None
) -> tuple[OidcSettings | None, list[Problem]]:
    """The `oidc:` section's node (its key on `line`) -> settings (None if any problem), and
    every problem. Relative `ca_file`s are relative to `base`, read through `files`."""
    files = files or LastGood()
    problems: list[Problem] = []
    entries = _entries(node, "oidc", source, problems)
    values: dict[str, Any] = {}
    issuers: list[IssuerSettings] = []
    for key, (value_node, key_line) in entries.items():
        if key == "issuers":
            if not isinstance(value_node, yaml.SequenceNode) or not value_node.value:
                message = "oidc.issuers: expected a list of issuers"
                problems.append(Problem(source, key_line, message))
                continue
            for item in value_node.value:
                issuer = _issuer(item, source, base, problems, files)
                if issuer is None:
                    continue
                where = int(issuer.origin.rpartition(":")[2])
                if any(i.issuer == issuer.issuer for i in issuers):
                    message = f"oidc.issuers: {issuer.issuer} is listed twice"
                    problems.append(Problem(source, where, message))
                problems.extend(
                    Problem(source, where, message)
                    for other in issuers
                    if other.issuer != issuer.issuer
                    for message in _clashes(other, issuer)
                )
                issuers.append(issuer)
            continue
        try:
            if key not in _SECTION:
                known = ", ".join(sorted([*_SECTION, "issuers"]))
                raise BadValue(f"unknown key 'oidc.{key}' (known: {known})")
            values[key] = _SECTION[key](construct(value_node), f"oidc.{key}")
        except ValueError as exc:
            problems.append(Problem(source, key_line, str(exc)))
    if "issuers" not in entries and not problems:
        problems.append(Problem(source, line, "oidc: no issuers"))
    if problems:
        return None, problems
    return OidcSettings(tuple(issuers), **values), []
