"""The configuration: one frozen `Config`, built only by `load()`, validated once.

`load()` collects every problem into one `ConfigError` listing `file:line: message`, the way
`nginx -t` does. Relative paths written in the config file are resolved against the file's
directory; built-in defaults and command-line flags are relative to the working directory.
Only the CLI exits; this module raises.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from ..authn.cache import CacheSettings
from ..authn.chain import AuthSettings
from ..authn.throttle import ThrottleSettings
from ..core.addresses import IPNetwork, parse_networks, parse_upstream
from ..core.lastgood import LastGood
from ..core.limits import Limits, Timeouts
from ..core.problems import ConfigError, Problem, compose_yaml, construct, read_text
from ..core.values import boolean, choice, file_path, name, port, seconds, text, whole_number
from ..policy.acl import (
    TAG_SECTIONS,
    bind_issuers,
    parse_acl_document,
    parse_rules,
    parse_tag_rules,
)
from ..policy.grantfile import GrantSettings, parse_max_duration
from ..policy.quarantinefile import QuarantineSettings
from ..policy.ratelimits import RateLimits, parse_rate_limits
from ..policy.rules import Rule, recipe_rules
from ..policy.tagrules import TagRule
from ..state.redis_layout import parse_redis_url, parse_sentinel_addresses, parse_service
from ..state.store import STATE_BACKENDS, StateSettings
from ..tokenserver.scopes import MAX_EXPIRY as MAX_TOKEN_EXPIRY
from ..tokenserver.scopes import TokenSettings

if TYPE_CHECKING:
    from ..authn.ldap_settings import LdapSettings
    from ..authn.oidc_settings import OidcSettings

Backend = Literal["htpasswd", "ldap", "redis"]
BACKENDS: tuple[str, ...] = ("htpasswd", "ldap", "redis")
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
AccessLogFormat = Literal["common", "combined", "combined_duration", "json", "off"]
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error", "critical")
ACCESS_LOG_FORMATS: tuple[str, ...] = ("common", "combined", "combined_duration", "json", "off")
DEFAULT_CONFIG_PATH = Path("conf/regproxy.yaml")


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def default_workers() -> int:
    """One worker per CPU this process may run on (its affinity, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Config:
    """Everything the server needs, validated; never mutated after `load()`."""

    listen: Listen = field(default_factory=lambda: Listen("127.0.0.1", 5043))
    upstream: str = "http://127.0.0.1:5000"
    htpasswd: Path = Path("conf/htpasswd")
    groups: Path | None = Path("conf/groups")
    tls_cert: Path = Path("certs/server.crt")
    tls_key: Path = Path("certs/server.key")
    workers: int = field(default_factory=default_workers)
    log_level: LogLevel = "info"
    realm: str = "Registry Authentication"
    push_group: str = "pusher"
    access_log: AccessLogFormat = "common"
    access_log_path: Path | None = None  # None: stdout
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    throttle: ThrottleSettings = field(default_factory=ThrottleSettings)
    credentials_cache: CacheSettings = field(default_factory=CacheSettings)
    state: StateSettings = field(default_factory=StateSettings)  # where replicas share state
    trusted_proxies: tuple[IPNetwork, ...] = ()  # whose X-Forwarded-For is believed
    audit_log: Path | None = None  # JSON lines of push/delete decisions
    cache_ttl: float = 10.0  # seconds a blob HEAD answer is reused (proxy.cache); 0: off
    metrics_listen: Listen | None = None  # /metrics and /health; off by default
    ldap: LdapSettings | None = None  # the `ldap:` section, parsed by proxy.authn.ldap_settings
    token: TokenSettings | None = None  # token server mode (distribution token auth)
    oidc: OidcSettings | None = None  # workload tokens: proxy.authn.oidc_settings
    robots: Path | None = None  # the robots file (proxy.authn.robotfile)
    secret_file: Path | None = None  # the server's secret: robot hashes, upload bindings
    grants: GrantSettings = field(default_factory=GrantSettings)  # break-glass grants
    quarantine: QuarantineSettings = field(default_factory=QuarantineSettings)
    rate_limits: RateLimits | None = None  # budgets per identity and window; None: off
    auth_backends: tuple[Backend, ...] = ("htpasswd",)
    acl: tuple[Rule, ...] | None = None  # None: the recipe's rules (push_group)
    acl_file: Path | None = None  # where `acl` came from when it is a separate file
    tag_rules: tuple[TagRule, ...] = ()  # immutable_tags and protected_deletes, from both files
    source: Path | None = None  # the YAML file this came from, watched for edits

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self.acl if self.acl is not None else recipe_rules(self.push_group)

    @property
    def authentication(self) -> AuthSettings:
        return AuthSettings(
            self.auth_backends, self.ldap, self.oidc, self.credentials_cache, self.throttle
        )

    def watched_files(self) -> tuple[Path, ...]:
        """Files whose edits take effect live."""
        files = [self.htpasswd, self.tls_cert, self.tls_key]
        if self.ldap is not None:
            files.extend(p for p in (self.ldap.bind_password_file, self.ldap.ca_file) if p)
        if self.token is not None:
            files.extend((self.token.key, self.token.certificate))
        if self.oidc is not None:
            files.extend(self.oidc.ca_files())
        files.extend(p for p in (self.robots, self.secret_file, self.grants.file) if p is not None)
        if self.quarantine.file is not None:
            files.append(self.quarantine.file)
        if self.groups is not None:
            files.append(self.groups)
        files.extend(p for p in (self.source, self.acl_file) if p is not None)
        return tuple(files)


_Parser = Any


def _parse_listen(value: object) -> Listen:
    text = str(value)
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([A-Za-z0-9][A-Za-z0-9.-]*):(\d+)", text)
    if not match:
        hint = " (every interface is 0.0.0.0 or [::])" if text.startswith("*") else ""
        raise ValueError(f"expected HOST:PORT or [IPv6]:PORT, got {text!r}{hint}")
    host = match.group(1) or match.group(3)
    number = port(int(match.group(2) or match.group(4)))
    if match.group(1):
        ipaddress.IPv6Address(host)
    return Listen(host, number)


def _parse_expiry(value: object) -> int:
    number = whole_number(value)
    if number > MAX_TOKEN_EXPIRY:
        raise ValueError(f"at most {MAX_TOKEN_EXPIRY} seconds, got {number}")
    return number


def _parse_token_path(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"/[A-Za-z0-9._~/-]*", value):
        raise ValueError(f"expected an absolute path like /auth, got {value!r}")
    if value == "/v2" or value.startswith("/v2/"):
        raise ValueError("must not be under /v2, which is the registry's")
    return value


def _parse_groups_list(value: object) -> frozenset[str]:
    items = value if isinstance(value, list) else [value]
    return frozenset(name(v, "group name") for v in items)


def _parse_trusted(value: object) -> tuple[IPNetwork, ...]:
    return () if value == [] or value is None else parse_networks(value)


def _parse_backends(value: object) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or any(v not in BACKENDS for v in items) or len(set(items)) != len(items):
        raise ValueError(f"expected a list of distinct {', '.join(BACKENDS)}, got {value!r}")
    return tuple(str(v) for v in items)


def _parse_optional_listen(value: object) -> Listen | None:
    return None if value is None else _parse_listen(value)


def _parse_connections(value: object) -> int:
    """`auto` (0: from the open-files limit) or a positive number."""
    if value == "auto":
        return 0
    try:
        return whole_number(value)
    except ValueError:
        raise ValueError(f"expected auto or a positive integer, got {value!r}") from None


def _parse_rate(value: object) -> int:
    """Bytes a second, or 0 (off)."""
    if value == 0:
        return 0
    try:
        return whole_number(value)
    except ValueError:
        raise ValueError(f"expected bytes a second (0: off), got {value!r}") from None


def _parse_database(value: object) -> int:
    try:
        return whole_number(value, low=0)
    except ValueError:
        raise ValueError(f"expected a database number (0, 1, ...), got {value!r}") from None


def _parse_key_prefix(value: object) -> str:
    if not isinstance(value, str) or not value.isprintable() or " " in value or len(value) > 64:
        raise ValueError(f"expected up to 64 printable characters without spaces, got {value!r}")
    return value


def _parse_realm(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {value!r}")
    text = value
    if not text or '"' in text or "\\" in text or not text.isprintable():
        raise ValueError(f"realm must be printable text without quotes, got {value!r}")
    return text


_seconds_or_off = partial(seconds, zero=True)


def _parse_choice(choices: tuple[str, ...]) -> _Parser:
    return partial(choice, choices=choices)


# YAML key (nested keys dotted) -> (Config attribute, parser).
_PATH = "path"
_OPTIONAL_PATH = "optional-path"
_KEYS: dict[str, tuple[str, _Parser]] = {
    "listen": ("listen", _parse_listen),
    "upstream": ("upstream", parse_upstream),
    "htpasswd": ("htpasswd", _PATH),
    "groups": ("groups", _OPTIONAL_PATH),
    "tls.cert": ("tls_cert", _PATH),
    "tls.key": ("tls_key", _PATH),
    "workers": ("workers", whole_number),
    "log_level": ("log_level", _parse_choice(LOG_LEVELS)),
    "realm": ("realm", _parse_realm),
    "push_group": ("push_group", name),
    "access_log.format": ("access_log", _parse_choice(ACCESS_LOG_FORMATS)),
    "access_log.path": ("access_log_path", _OPTIONAL_PATH),
    "timeouts.connect": ("timeouts.connect", seconds),
    "timeouts.read": ("timeouts.read", seconds),
    "timeouts.drain": ("timeouts.drain", seconds),
    "timeouts.drain_delay": ("timeouts.drain_delay", _seconds_or_off),
    "timeouts.keepalive": ("timeouts.keepalive", seconds),
    "timeouts.header": ("timeouts.header", seconds),
    "timeouts.handshake": ("timeouts.handshake", seconds),
    "timeouts.client_idle": ("timeouts.client_idle", seconds),
    "limits.per_user": ("limits.per_user", whole_number),
    "limits.per_address": ("limits.per_address", whole_number),
    "limits.connections": ("limits.connections", _parse_connections),
    "limits.connections_per_address": ("limits.connections_per_address", _parse_connections),
    "limits.upstream_connections": ("limits.upstream_connections", _parse_connections),
    "limits.upstream_wait": ("limits.upstream_wait", seconds),
    "limits.upstream_per_user": ("limits.upstream_per_user", _parse_connections),
    "limits.anonymous": ("limits.anonymous", whole_number),
    "limits.anonymous_per_address": ("limits.anonymous_per_address", whole_number),
    "limits.min_rate": ("limits.min_rate", _parse_rate),
    "throttle.attempts": ("throttle.attempts", whole_number),
    "throttle.window": ("throttle.window", seconds),
    "throttle.max_delay": ("throttle.max_delay", seconds),
    "trusted_proxies": ("trusted_proxies", _parse_trusted),
    "audit_log": ("audit_log", _OPTIONAL_PATH),
    "cache.ttl": ("cache_ttl", _seconds_or_off),
    "cache.credentials_ttl": ("credentials_cache.ttl", _seconds_or_off),
    "cache.credentials_size": ("credentials_cache.size", whole_number),
    "metrics.listen": ("metrics_listen", _parse_optional_listen),
    "state.backend": ("state.backend", _parse_choice(STATE_BACKENDS)),
    "state.url": ("state.url", parse_redis_url),
    "state.key_prefix": ("state.key_prefix", _parse_key_prefix),
    "state.username": ("state.username", text),
    "state.password": ("state.password", text),
    "state.password_file": ("state.password_file", _OPTIONAL_PATH),
    "state.ca_file": ("state.ca_file", _OPTIONAL_PATH),
    "state.cert_file": ("state.cert_file", _OPTIONAL_PATH),
    "state.key_file": ("state.key_file", _OPTIONAL_PATH),
    "state.timeout": ("state.timeout", seconds),
    "state.connect_timeout": ("state.connect_timeout", seconds),
    "state.sentinel.addresses": ("state.sentinels", parse_sentinel_addresses),
    "state.sentinel.service": ("state.service", parse_service),
    "state.sentinel.database": ("state.database", _parse_database),
    "state.sentinel.tls": ("state.sentinel_tls", boolean),
    "state.sentinel.username": ("state.sentinel_username", text),
    "state.sentinel.password": ("state.sentinel_password", text),
    "state.sentinel.password_file": ("state.sentinel_password_file", _OPTIONAL_PATH),
    "acl": ("acl", "acl"),  # handled by _load_acl
    "immutable_tags": ("tag_rules", "tag rules"),  # parsed by proxy.policy.acl, with the ACL file's
    "protected_deletes": ("tag_rules", "tag rules"),
    "ldap": ("ldap", "ldap"),  # handled by _load_ldap
    "oidc": ("oidc", "oidc"),  # handled by _load_oidc
    "robots": ("robots", _OPTIONAL_PATH),
    "secret_file": ("secret_file", _OPTIONAL_PATH),
    "grants.file": ("grants.file", _OPTIONAL_PATH),
    "grants.max_duration": ("grants.max_duration", parse_max_duration),
    "quarantine.file": ("quarantine.file", _OPTIONAL_PATH),
    "token": ("token", "token"),  # built from the token.* keys by _combinations
    "token.issuer": ("token.issuer", text),
    "token.service": ("token.service", text),
    "token.key": ("token.key", _PATH),
    "token.certificate": ("token.certificate", _PATH),
    "token.expiry": ("token.expiry", _parse_expiry),
    "token.path": ("token.path", _parse_token_path),
    "token.catalog_groups": ("token.catalog_groups", _parse_groups_list),
    "auth_backends": ("auth_backends", _parse_backends),
    "rate_limits": ("rate_limits", "rate limits"),  # parsed by proxy.policy.ratelimits
}
# Every mapping the keys are nested in: `tls`, `state`, `state.sentinel`, ...
_SECTIONS = {key.rsplit(".", n)[0] for key in _KEYS for n in range(1, key.count(".") + 1)}

# Command-line flag destinations (argparse names) -> YAML keys they override.
FLAG_KEYS: dict[str, str] = {
    "listen": "listen",
    "upstream": "upstream",
    "htpasswd": "htpasswd",
    "groups": "groups",
    "tls_cert": "tls.cert",
    "tls_key": "tls.key",
    "workers": "workers",
    "log_level": "log_level",
    "acl": "acl",
}


def _flatten(
    node: yaml.Node, source: str, problems: list[Problem], prefix: str = ""
) -> dict[str, tuple[Any, int]]:
    """YAML mapping -> {dotted key: (python value, line)}; unknown keys are problems."""
    flat: dict[str, tuple[Any, int]] = {}
    where = prefix.rstrip(".") or "top level"
    if not isinstance(node, yaml.MappingNode):
        problems.append(Problem(source, node.start_mark.line + 1, f"{where}: expected a mapping"))
        return flat
    seen: set[str] = set()
    for key_node, value_node in node.value:
        key, line = f"{prefix}{key_node.value}", key_node.start_mark.line + 1
        if key in seen:
            problems.append(Problem(source, line, f"duplicate key {key!r}"))
            continue
        seen.add(key)
        dotted = "." in str(key_node.value)  # `tls.cert:` is no alias of `tls: {cert:}`
        if key in _SECTIONS and not dotted:
            flat.update(_flatten(value_node, source, problems, prefix=f"{key}."))
        elif key in ("acl", "ldap", "oidc", "rate_limits", *TAG_SECTIONS) and not prefix:
            flat[key] = (value_node, line)  # parsed later, with the lines of the nodes inside
        elif key in _KEYS and not dotted:
            try:
                flat[key] = (construct(value_node), line)
            except ValueError as exc:
                problems.append(Problem(source, line, f"{key}: {exc}"))
        else:
            problems.append(Problem(source, line, f"unknown key {key!r}"))
    return flat


def _read_yaml(path: Path, problems: list[Problem], files: LastGood) -> dict[str, tuple[Any, int]]:
    source = str(path)
    try:
        text = files.read("config", path, read_text)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return {}
    try:
        node = compose_yaml(text, source)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return {}
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")):
        return {}
    return _flatten(node, source, problems)


def _convert(
    key: str, value: Any, base: Path, where: tuple[str, int], problems: list[Problem]
) -> Any:
    parser = _KEYS[key][1]
    if parser == _OPTIONAL_PATH and value is None:
        return None
    try:
        if parser in (_PATH, _OPTIONAL_PATH):
            return normalised(file_path(value, base))
        return parser(value)
    except ValueError as exc:
        problems.append(Problem(*where, f"{key}: {exc}"))
        return None


def normalised(path: Path) -> Path:
    """`conf/../certs/server.crt` as `certs/server.crt`, unless a symbolic link on the way
    makes the two different files."""
    clean = Path(os.path.normpath(path))
    return clean if clean == path or clean.resolve() == path.resolve() else path


def _apply(config: Config, values: Mapping[str, Any]) -> Config:
    """Set attributes; `section.field` attributes replace a field of a nested dataclass."""
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, _, name = _KEYS[key][0].rpartition(".")
        if section:
            nested.setdefault(section, {})[name] = value
        else:
            direct[name] = value
    for section, fields in nested.items():
        direct[section] = replace(getattr(config, section), **fields)
    return replace(config, **direct)


def load(
    path: Path | None,
    overrides: Mapping[str, object] | None = None,
    files: LastGood | None = None,
    read_rules: bool = True,
) -> Config:
    """Build the Config from a YAML file (optional) and flag overrides (YAML keys -> values).
    `files`: how the config file and the files it names are read (at a reload, with their
    last good versions to fall back on; by default, plainly). `read_rules` False: the ACL's
    rules, in place or in a file, are not read (none), for what must be known before.

    Raises ConfigError listing every problem found, never just the first.
    """
    files = files or LastGood()
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    acl: tuple[tuple[Rule, ...] | None, Path | None] = (None, None)
    acl_tag_rules: tuple[TagRule, ...] = ()  # from the ACL file named last (a flag wins)
    tag_rules: list[TagRule] = []  # from the config's own sections
    sources: list[tuple[dict[str, tuple[Any, int]], Path, str]] = []
    if path is not None:
        sources.append((_read_yaml(path, problems, files), path.parent, str(path)))
    flags = {key: (raw, 0) for key, raw in (overrides or {}).items()}
    sources.append((flags, Path("."), "command line"))
    lines: dict[str, int] = {}  # key -> its line in the file, for problems of combinations
    for entries, base, source in sources:
        for key, (raw, line) in entries.items():
            lines[key] = line
            if key == "acl":
                rules, acl_tag_rules, acl_path = _load_acl(
                    raw, base, (source, line), problems, files if read_rules else None
                )
                acl = (rules, acl_path)
                continue
            if key in TAG_SECTIONS:
                section_rules, section_problems = parse_tag_rules(raw, source, key)
                tag_rules.extend(section_rules)
                problems.extend(section_problems)
                continue
            if key == "ldap":
                values["ldap"] = _load_ldap(raw, source, line, problems, files)
                continue
            if key == "oidc":
                values["oidc"] = _load_oidc(raw, base, (source, line), problems, files)
                continue
            if key == "rate_limits":
                values["rate_limits"], found = parse_rate_limits(raw, source)
                problems.extend(found)
                continue
            converted = _convert(key, raw, base, (source, line), problems)
            if converted is not None or raw is None:
                values[key] = converted
    source = str(path or "command line")
    problems.extend(_combinations(values, acl[0] is not None, source, lines))
    if acl[0] is not None:
        oidc = values.get("oidc")
        issuers = tuple(i.issuer for i in oidc.issuers) if oidc is not None else ()
        rules, issuer_problems = bind_issuers(acl[0], issuers)
        acl = (rules, acl[1])
        problems.extend(issuer_problems)
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: (p.source, p.line)))
    all_tag_rules = (*tag_rules, *acl_tag_rules)
    config = Config(source=path, acl=acl[0], acl_file=acl[1], tag_rules=all_tag_rules)
    return _apply(config, values)


def _combinations(
    values: dict[str, Any], has_acl: bool, source: str, lines: Mapping[str, int]
) -> list[Problem]:
    """Settings that only make sense together. Also fills in the default backend order
    (htpasswd, then LDAP when there is an `ldap:` section) and builds the token section."""
    problems = []
    token = {k.split(".", 1)[1]: values.pop(k) for k in list(values) if k.startswith("token.")}
    if token:
        missing = {"issuer", "service", "key", "certificate"} - set(token)
        if missing:
            problems.append(Problem(source, 0, f"token: missing {', '.join(sorted(missing))}"))
        else:
            values["token"] = TokenSettings(**token)
    backends = values.get("auth_backends") or ("htpasswd", "ldap")[: 1 + bool(values.get("ldap"))]
    values["auth_backends"] = backends
    if "ldap" in backends and values.get("ldap") is None and "ldap" not in values:
        problems.append(
            Problem(source, 0, "auth_backends names ldap but there is no ldap: section")
        )
    if values.get("robots") is not None and values.get("secret_file") is None:
        problems.append(
            Problem(source, 0, "robots needs secret_file (the key robot secrets are hashed with)")
        )
    if has_acl and "push_group" in values:
        problems.append(
            Problem(source, 0, "push_group has no effect with an acl: name the group in a rule")
        )
    problems.extend(
        Problem(source, lines.get(key, 0), text) for key, text in _state_problems(values, backends)
    )
    return problems


def _state_problems(values: dict[str, Any], backends: tuple[str, ...]) -> list[tuple[str, str]]:
    """The `state:` keys that only make sense together: (the key at fault, the problem)."""
    state = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("state.")}
    sentinel = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("sentinel.")}
    redis = state.get("backend") == "redis"
    found: list[tuple[str, str]] = []

    def problem(key: str, text: str) -> None:
        found.append((key if key == "auth_backends" else f"state.{key}", text))

    if redis and not state.get("url") and not sentinel:
        problem("backend", "state: backend redis needs a url (redis://HOST:PORT/DB) or a sentinel")
    if redis and state.get("url") and sentinel:
        problem("url", "state: url and sentinel exclude each other (the sentinels name Redis)")
    if not redis and set(state) - {"backend"}:
        problem(min(set(state) - {"backend"}), "state: these keys need backend: redis")
    if "redis" in backends and not redis:
        problem("auth_backends", "auth_backends names redis: it needs state: {backend: redis}")
    for section in ("", "sentinel."):
        secrets = (state.get(f"{section}password"), state.get(f"{section}password_file"))
        if None not in secrets:
            where = f"state.{section}".rstrip(".")
            problem(
                f"{section}password_file", f"{where}: password and password_file exclude each other"
            )
    if sentinel and not {"sentinel.addresses", "sentinel.service"} <= state.keys():
        problem(f"sentinel.{min(sentinel)}", "state.sentinel: needs addresses and service")
    tls = [k for k in ("ca_file", "cert_file", "key_file") if state.get(k) is not None]
    tls_on = sentinel.get("tls") if sentinel else str(state.get("url")).startswith("rediss://")
    if tls and not tls_on:
        problem(tls[0], f"state: {', '.join(tls)}: only with TLS (rediss://, sentinel.tls)")
    if (state.get("cert_file") is None) != (state.get("key_file") is None):
        problem("cert_file" if "cert_file" in state else "key_file",
                "state: cert_file and key_file go together")  # fmt: skip
    return found


def _load_ldap(node: Any, source: str, line: int, problems: list[Problem], files: LastGood) -> Any:
    """The `ldap:` section, checked by the LDAP backend's own parser (with lines)."""
    from ..authn.ldap_settings import parse_ldap_settings  # imports ldap3: only when configured

    if not isinstance(node, yaml.MappingNode):
        problems.append(Problem(source, line, "ldap: expected a mapping of settings"))
        return None
    values: dict[str, Any] = {}
    line_of: dict[str, int] = {"ldap": line}
    for key_node, value_node in node.value:
        key = str(key_node.value)
        line_of[key] = key_node.start_mark.line + 1
        try:
            values[key] = construct(value_node)
        except ValueError as exc:
            problems.append(Problem(source, line_of[key], f"ldap.{key}: {exc}"))
    settings, ldap_problems = parse_ldap_settings(values, source, line_of, files=files)
    problems.extend(ldap_problems)
    return settings


def _load_oidc(
    node: Any, base: Path, where: tuple[str, int], problems: list[Problem], files: LastGood
) -> Any:
    """The `oidc:` section, checked by its own parser (with lines)."""
    from ..authn.oidc_settings import parse_oidc_settings

    settings, oidc_problems = parse_oidc_settings(node, *where, base, files)
    problems.extend(oidc_problems)
    return settings


def _load_acl(
    raw: Any,
    base: Path,
    where: tuple[str, int],
    problems: list[Problem],
    files: LastGood | None,
) -> tuple[tuple[Rule, ...] | None, tuple[TagRule, ...], Path | None]:
    """`acl:` is a list of rules in place, the name of a file holding them (and, maybe, tag
    rules), or null (none: the recipe's policy). `files` None: the rules are not read."""
    source, line = where
    if isinstance(raw, yaml.Node) and not isinstance(raw, yaml.ScalarNode):
        if files is None:
            return (), (), None
        rules, rule_problems = parse_rules(raw, source)
        problems.extend(rule_problems)
        return rules, (), None
    name = construct(raw) if isinstance(raw, yaml.ScalarNode) else raw
    if name is None:
        return None, (), None
    if not isinstance(name, str) or not name:
        problems.append(Problem(source, line, "acl: expected a list of rules or a file name"))
        return None, (), None
    acl_path = normalised(base / name)
    if files is None:
        return (), (), acl_path
    try:
        rules, tag_rules = files.read("acl", acl_path, _acl_file, pure=True)
    except ConfigError as exc:
        rules, tag_rules = (), ()
        problems.extend(exc.problems)
    return rules, tag_rules, acl_path


def _acl_file(path: Path) -> tuple[tuple[Rule, ...], tuple[TagRule, ...]]:
    """An ACL file's rules and tag rules; ConfigError with every problem in it."""
    rules, tag_rules, problems = parse_acl_document(read_text(path), str(path))
    if problems:
        raise ConfigError(problems)
    return rules, tag_rules
