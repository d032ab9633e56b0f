"""The `ldap:` section: LDAP / Active Directory settings, parsed and validated, every problem
with its line. Pure but for reading the password and CA files."""

# Every key (only `url` and one way of finding the user are required):
#
#   ldap:
#     url: ldaps://ldap1.example.org      # or a list, tried in order
#     start_tls: false                    # true: upgrade ldap:// URLs with StartTLS first
#     ca_file: /etc/regproxy/ldap-ca.pem  # default: system CAs
#     allow_insecure: false               # true allows plain ldap:// to a non-loopback host
#     bind_dn: cn=regproxy,ou=services,dc=example,dc=org   # omit: anonymous
#     bind_password_file: /run/secrets/ldap                # or bind_password (never both)
#     user_base: ou=people,dc=example,dc=org                # search-then-bind ...
#     user_filter: "(uid={user})"         # AD: "(sAMAccountName={user})"
#     user_scope: subtree                 # base, one or subtree
#     # user_dn_template: "uid={user},ou=people,dc=example,dc=org"   # ... or direct bind
#     exact_user_name: true               # the login name spelled as in the directory
#     # user_name_attribute: uid          # default: from the filter or template
#     member_of_attribute: memberOf       # groups from this attribute of the user's entry
#     group_base: ou=groups,dc=example,dc=org   # only groups under it count
#     group_filter: "(member={dn})"       # or "(memberUid={user})"; AD nested:
#                                         # "(member:1.2.840.113556.1.4.1941:={dn})"
#     group_scope: subtree
#     group_name_attribute: cn
#     timeout: 5                          # seconds for one server to connect or answer
#     pool_size: 4                        # connections (and threads) per kind
#     cache_ttl: 60                       # seconds a login is remembered; 0: never
#
# Directories match names loosely (`ALICE` finds `alice`) but ACL rules compare them exactly:
# with `exact_user_name` the login name must equal a value of the naming attribute, or it is
# NO_SUCH_USER (an AD `{user}@domain` template has no entry to compare: it needs false).
# A group's name is its `group_name_attribute`, or the first RDN value of a `memberOf` DN;
# with `group_base`, `memberOf` values outside it are ignored.

from __future__ import annotations

import ipaddress
import re
import ssl
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from ..core.lastgood import LastGood
from ..core.problems import BadValue, Problem
from ..core.values import boolean, choice, file_path, keyed, port, seconds, text, whole_number

with warnings.catch_warnings():
    # ldap3 2.9.1 imports names that pyasn1 >= 0.6 deprecates: harmless, but warnings are errors
    # in the tests. Only the import is covered.
    warnings.simplefilter("ignore", DeprecationWarning)
    import ldap3  # type: ignore[import-untyped]
    from ldap3.core.exceptions import LDAPException  # type: ignore[import-untyped]
    from ldap3.operation.search import parse_filter  # type: ignore[import-untyped]

Scope = Literal["base", "one", "subtree"]
SCOPES: dict[str, str] = {"base": ldap3.BASE, "one": ldap3.LEVEL, "subtree": ldap3.SUBTREE}
MAX_USER_LENGTH = 256
MAX_CACHE_TTL = 3600.0
MAX_POOL_SIZE = 64

_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
_ATTRIBUTE_RE = re.compile(r"[A-Za-z][A-Za-z0-9-]*|\d+(?:\.\d+)+")
_URL_RE = re.compile(r"(ldaps?)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?/?", re.I)
# Characters that would change the meaning of a bind name that is not a DN (AD's
# user@domain or DOMAIN\user): such names are refused instead of escaped.
_NOT_IN_BIND_NAMES = frozenset('\\@,=+<>;"#*/')


@dataclass(frozen=True)
class LdapUrl:
    """One server: `ldaps://host:636`; `host` without IPv6 brackets."""

    text: str
    tls: bool
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True)
class LdapSettings:
    """The `ldap:` section, validated by `parse_ldap_settings`. See the module docstring."""

    urls: tuple[LdapUrl, ...]
    start_tls: bool = False
    ca_file: Path | None = None
    allow_insecure: bool = False
    bind_dn: str | None = None
    bind_password: str | None = None  # secret: shown as *** by repr()
    bind_password_file: Path | None = None  # where bind_password was read from, if a file
    user_base: str | None = None
    user_filter: str = "(uid={user})"
    user_scope: Scope = "subtree"
    user_dn_template: str | None = None
    # Attributes one of whose values must be the login name exactly (see exact_user_name);
    # () when the check is off.
    user_name_attributes: tuple[str, ...] = ()
    member_of_attribute: str | None = None
    group_base: str | None = None
    group_filter: str | None = None
    group_scope: Scope = "subtree"
    group_name_attribute: str = "cn"
    timeout: float = 5.0
    pool_size: int = 4
    cache_ttl: float = 60.0

    def __repr__(self) -> str:
        shown = []
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "bind_password" and value is not None:
                shown.append(f"{item.name}='***'")
            elif item.name == "urls":
                shown.append(f"urls={tuple(url.text for url in value)!r}")
            else:
                shown.append(f"{item.name}={value!r}")
        return f"LdapSettings({', '.join(shown)})"

    def clear_text_refused(self, url: LdapUrl, address: str) -> bool:
        """Whether connecting to `address`, which `url`'s host resolved to, would send
        passwords in clear text to another host (a `localhost` that resolves elsewhere)."""
        if url.tls or self.start_tls or self.allow_insecure:
            return False
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])  # an IPv6 scope: not the host
        except ValueError:
            return True
        mapped = getattr(ip, "ipv4_mapped", None)
        return not (ip.is_loopback or (mapped is not None and mapped.is_loopback))

    @property
    def search(self) -> bool:
        """True: search-then-bind; False: direct bind with `user_dn_template`."""
        return self.user_dn_template is None

    @property
    def template_is_dn(self) -> bool:
        """The direct-bind template names an entry (uid=...), not AD's user@domain."""
        return self.user_dn_template is not None and "=" in self.user_dn_template

    @property
    def budget(self) -> float:
        """The longest one check waits: every URL may take `timeout`, then the answer."""
        return self.timeout * (len(self.urls) + 1)


# -- configuration -------------------------------------------------------------------------------

_text = keyed(text)
_boolean = keyed(boolean)
_number = keyed(seconds)
_integer = keyed(whole_number)
_choice = keyed(choice)
_port = keyed(port)
_path = keyed(file_path)


def _secret(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise BadValue(f"{key}: expected a non-empty string (quote it)")  # never echo a secret
    if any(c in value for c in "\0\r\n"):
        raise BadValue(f"{key}: line breaks or NUL in the password")
    return value


def _scope(value: Any, key: str) -> Scope:
    scope: Scope = _choice(value, key, SCOPES, "base, one or subtree")  # type: ignore[assignment]
    return scope


def _attribute(value: Any, key: str) -> str:
    text = _text(value, key)
    if not _ATTRIBUTE_RE.fullmatch(text):
        raise BadValue(f"{key}: not an attribute name: {value!r}")
    return text


def _dn(value: Any, key: str) -> str:
    text = _text(value, key)
    try:
        if not all(pairs for pairs in split_dn(text)):
            raise ValueError("empty RDN")
    except ValueError as exc:
        raise BadValue(f"{key}: not a DN ({exc}): {value!r}") from None
    return text


def _url(value: Any, key: str) -> LdapUrl:
    text = _text(value, key)
    match = _URL_RE.fullmatch(text.strip())
    if not match:
        raise BadValue(f"{key}: expected ldap://HOST[:PORT] or ldaps://HOST[:PORT], got {value!r}")
    tls = match.group(1).lower() == "ldaps"
    host = match.group(2).strip("[]")
    if match.group(2).startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise BadValue(f"{key}: bad IPv6 address in {value!r}") from None
    number = _port(int(match.group(3) or (636 if tls else 389)), key)
    return LdapUrl(text.strip(), tls, host, number)


def _urls(value: Any, key: str) -> tuple[LdapUrl, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise BadValue(f"{key}: expected a URL or a list of URLs")
    return tuple(_url(item, key) for item in items)


def _template(value: Any, key: str, allowed: tuple[str, ...], *, required: bool) -> str:
    text = _text(value, key)
    names = _PLACEHOLDER_RE.findall(text)
    unknown = sorted({n for n in names if n not in allowed})
    if unknown:
        allowed_text = " and ".join("{" + a + "}" for a in allowed)
        raise BadValue(f"{key}: unknown placeholder {{{unknown[0]}}} (use {allowed_text})")
    if required and not names:
        raise BadValue(f"{key}: must contain " + " or ".join("{" + a + "}" for a in allowed))
    return text


def _filter(value: Any, key: str, allowed: tuple[str, ...]) -> str:
    text = _template(value, key, allowed, required=True)
    try:
        parse_filter(_PLACEHOLDER_RE.sub("x", text), None, True, True, None, False)
    except LDAPException as exc:
        raise BadValue(f"{key}: not an LDAP filter ({exc}): {value!r}") from None
    return text


def _user_template(value: Any, key: str) -> str:
    text = _template(value, key, ("user",), required=True)
    if "=" in text:
        _dn(text.replace("{user}", "x"), key)
    return text


_SIMPLE: dict[str, Callable[[Any, str], Any]] = {
    "url": _urls,
    "start_tls": _boolean,
    "allow_insecure": _boolean,
    "bind_dn": lambda v, k: _dn(v, k) if "=" in str(v) else _text(v, k),  # AD: svc@corp too
    "bind_password": _secret,
    "user_base": _dn,
    "user_filter": lambda v, k: _filter(v, k, ("user",)),
    "user_scope": _scope,
    "user_dn_template": _user_template,
    "exact_user_name": _boolean,
    "user_name_attribute": lambda v, k: tuple(
        _attribute(a, k) for a in (v if isinstance(v, list) and v else [v])
    ),
    "member_of_attribute": _attribute,
    "group_base": _dn,
    "group_filter": lambda v, k: _filter(v, k, ("user", "dn")),
    "group_scope": _scope,
    "group_name_attribute": _attribute,
    "timeout": lambda v, k: _number(v, k, high=300),
    "pool_size": lambda v, k: _integer(v, k, 1, MAX_POOL_SIZE),
    "cache_ttl": lambda v, k: _number(
        v, k, high=MAX_CACHE_TTL, zero=True, wanted=f"0 and at most {MAX_CACHE_TTL:g} seconds"
    ),
}
_PATHS = ("ca_file", "bind_password_file")
KEYS = frozenset(_SIMPLE) | frozenset(_PATHS)


def _read_secret(path: Path, key: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadValue(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadValue(f"{key}: {path} is not UTF-8 text") from None
    secret = text[:-1] if text.endswith("\n") else text
    secret = secret[:-1] if secret.endswith("\r") else secret
    if not secret:
        raise BadValue(f"{key}: {path} is empty")
    if "\n" in secret or "\0" in secret:
        raise BadValue(f"{key}: {path} must hold the password alone on one line")
    return secret


def _check_ca(path: Path, key: str) -> None:
    try:
        ssl.create_default_context(cafile=str(path))
    except FileNotFoundError:
        raise BadValue(f"{key}: no such file: {path}") from None
    except OSError as exc:  # ssl.SSLError is an OSError
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise BadValue(f"{key}: no usable CA certificate in {path}: {reason}") from None


Report = Callable[[str | None, str], None]  # (key or None for the section, message)


def parse_ldap_settings(
    values: Mapping[str, Any],
    source: str,
    line_of: Mapping[str, int],
    *,
    base_dir: Path | None = None,
    files: LastGood | None = None,
) -> tuple[LdapSettings | None, list[Problem]]:
    """The `ldap:` section's values and their lines -> settings (None if any problem), and
    every problem found. The password and CA files are read now, not at first login."""
    problems: list[Problem] = []
    section = line_of.get("ldap", min(line_of.values(), default=1) - 1)

    def problem(key: str | None, message: str) -> None:
        problems.append(Problem(source, line_of.get(key, section) if key else section, message))

    if not isinstance(values, Mapping):
        problem(None, f"ldap: expected a mapping of settings, got {values!r}")
        return None, problems
    base = base_dir if base_dir is not None else Path(source).parent
    parsed: dict[str, Any] = {}
    for key, value in values.items():
        try:
            if key in _SIMPLE:
                parsed[key] = _SIMPLE[key](value, key)
            elif key in _PATHS:
                parsed[key] = _path(value, key, base)
            else:
                problem(key, f"unknown key {key!r} in ldap (known: {', '.join(sorted(KEYS))})")
        except BadValue as exc:
            problem(key, str(exc))
    bad = {key for key in values if key not in parsed}  # no follow-on problems for these

    _read_files(values, parsed, problem, files or LastGood())
    _check_combinations(values, parsed, bad, problem)
    names = _user_name_attributes(parsed, problem) if not problems else ()
    if problems:
        return None, sorted(problems, key=lambda p: p.line)
    parsed.pop("exact_user_name", None)
    parsed.pop("user_name_attribute", None)
    settings = LdapSettings(
        urls=parsed.pop("url"),
        user_name_attributes=names,
        **{k: v for k, v in parsed.items()},
    )
    return settings, []


def _read_files(
    values: Mapping[str, Any], parsed: dict[str, Any], problem: Report, files: LastGood
) -> None:
    """Read the CA file and the bind password file now: unreadable is a problem at load."""
    if "ca_file" in parsed:
        try:
            files.read("ldap CA", parsed["ca_file"], lambda path: _check_ca(path, "ca_file"))
        except BadValue as exc:
            problem("ca_file", str(exc))
    if "bind_password_file" in parsed:
        if "bind_password" in values:
            problem("bind_password_file", "use bind_password or bind_password_file, not both")
        else:
            try:
                parsed["bind_password"] = files.read(
                    "ldap password",
                    parsed["bind_password_file"],
                    lambda path: _read_secret(path, "bind_password_file"),
                )
            except BadValue as exc:
                problem("bind_password_file", str(exc))


_NAME_IN_FILTER_RE = re.compile(r"\(([A-Za-z][A-Za-z0-9-]*)=\{user\}\)")


def _user_name_attributes(parsed: Mapping[str, Any], problem: Report) -> tuple[str, ...]:
    """Which attributes must hold the login name exactly: given, or read off the filter or
    the template (`(uid={user})`, `uid={user},ou=...`); () if exact_user_name is false."""
    if not parsed.get("exact_user_name", True):
        if "user_name_attribute" in parsed:
            problem("user_name_attribute", "user_name_attribute is for exact_user_name: true")
        return ()
    if "user_name_attribute" in parsed:
        names: tuple[str, ...] = parsed["user_name_attribute"]
        if "user_dn_template" in parsed and "=" not in parsed["user_dn_template"]:
            problem("user_name_attribute", _NO_ENTRY_TO_CHECK)
        return names
    template = parsed.get("user_dn_template")
    if template is None:
        found = _NAME_IN_FILTER_RE.findall(parsed.get("user_filter", "(uid={user})"))
        if not found:
            problem(
                "user_filter",
                "cannot tell which attribute of the user_filter holds the login name: set "
                "user_name_attribute, or exact_user_name: false (see the documentation)",
            )
        return tuple(dict.fromkeys(found))
    if "=" not in template:
        problem("user_dn_template", _NO_ENTRY_TO_CHECK)
        return ()
    first = split_dn(template)[0]
    if len(first) != 1 or first[0][1] != "{user}":
        problem(
            "user_dn_template",
            "cannot tell which attribute holds the login name (the first RDN is not "
            "ATTRIBUTE={user}): set user_name_attribute, or exact_user_name: false",
        )
        return ()
    return (first[0][0],)


_NO_ENTRY_TO_CHECK = (
    "user_dn_template is not a DN, so the login name cannot be checked against the "
    "directory's spelling: set exact_user_name: false to accept that ALICE and alice then "
    "log in as the same account under two names (ACL rules compare names exactly), or use "
    "user_base and user_filter"
)


def _check_combinations(
    values: Mapping[str, Any], parsed: dict[str, Any], bad: set[str], problem: Report
) -> None:
    """Keys that only make sense together, or never together."""
    given = set(values)
    _check_transport(given, parsed, bad, problem)
    _check_service_account(given, problem)
    _check_user_lookup(given, problem)
    _check_groups(given, parsed, bad, problem)


def _check_transport(
    given: set[str], parsed: dict[str, Any], bad: set[str], problem: Report
) -> None:
    """A URL, and passwords never in clear text to another host."""
    urls: tuple[LdapUrl, ...] = parsed.get("url", ())
    start_tls = parsed.get("start_tls", False)
    if "url" not in given:
        problem(None, "ldap: url is required (ldaps://HOST or ldap://HOST with start_tls)")
    for url in urls if not {"start_tls", "allow_insecure"} & bad else ():
        if url.tls and start_tls:
            problem("start_tls", f"start_tls is for ldap:// URLs; {url.text} is TLS already")
        elif not (url.tls or start_tls or url.loopback or parsed.get("allow_insecure", False)):
            problem(
                "url",
                f"{url.text} would send passwords in clear text: use ldaps://, "
                "start_tls: true, or allow_insecure: true",
            )
    if "ca_file" in parsed and urls and not start_tls and not any(u.tls for u in urls):
        problem("ca_file", "ca_file is set but no URL uses TLS (ldaps:// or start_tls: true)")


def _check_service_account(given: set[str], problem: Report) -> None:
    """bind_dn and its password go together."""
    has_password = "bind_password" in given or "bind_password_file" in given
    if "bind_dn" in given and not has_password:
        problem("bind_dn", "bind_dn needs bind_password or bind_password_file")
    if has_password and "bind_dn" not in given:
        key = "bind_password" if "bind_password" in given else "bind_password_file"
        problem(key, f"{key} without bind_dn")


def _check_user_lookup(given: set[str], problem: Report) -> None:
    """Search-then-bind or direct bind: exactly one of them."""
    search_keys = [k for k in ("user_base", "user_filter", "user_scope") if k in given]
    if "user_dn_template" in given and search_keys:
        problem(
            search_keys[0],
            f"{search_keys[0]} is for search-then-bind: use user_base (search) or "
            "user_dn_template (direct bind), not both",
        )
    elif "user_dn_template" not in given and "user_base" not in given:
        where = search_keys[0] if search_keys else None
        problem(
            where,
            "ldap: set user_base (search-then-bind) or user_dn_template (direct bind)",
        )


def _check_groups(given: set[str], parsed: dict[str, Any], bad: set[str], problem: Report) -> None:
    """Where groups come from, and what needs the user's entry."""
    template = parsed.get("user_dn_template")
    group_filter = parsed.get("group_filter")
    if template is not None and "=" not in template:
        # AD's user@domain or DOMAIN\user: there is no entry DN to read groups from.
        if "member_of_attribute" in parsed:
            problem(
                "member_of_attribute",
                "member_of_attribute needs the user's entry: user_dn_template is not a DN "
                "(use user_base and user_filter to find the entry)",
            )
        if group_filter is not None and "{dn}" in group_filter:
            problem(
                "group_filter",
                "{dn} needs the user's entry: user_dn_template is not a DN "
                "(use {user}, or user_base and user_filter)",
            )
    if "group_filter" in given and "group_base" not in given:
        problem("group_filter", "group_filter needs group_base (where to search for groups)")
    if "group_base" in given and not {"group_filter", "member_of_attribute"} & given:
        problem("group_base", "group_base needs group_filter or member_of_attribute")
    for key in ("group_scope", "group_name_attribute"):
        if key in given and "group_filter" not in given and key not in bad:
            problem(key, f"{key} applies to the group search: set group_filter too")


# -- distinguished names -------------------------------------------------------------------------

_HEX = re.compile(r"[0-9A-Fa-f]{2}")


def split_dn(dn: str) -> list[list[tuple[str, str]]]:
    """RFC 4514 DN -> RDNs, each a list of (attribute, unescaped value); ValueError if bad."""
    # Lenient where servers are (spaces around `,`, `+` and `=`), strict about escapes.
    rdns: list[list[tuple[str, str]]] = []
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(dn)
    if not dn.strip():
        return []
    while True:
        equals = dn.find("=", i)
        if equals < 0:
            raise ValueError(f"no '=' in {dn[i:]!r}")
        attribute = dn[i:equals].strip()
        if not _ATTRIBUTE_RE.fullmatch(attribute):
            raise ValueError(f"bad attribute type {attribute!r}")
        i = equals + 1
        value = bytearray()
        trailing = 0  # unescaped spaces at the end of value, dropped
        while i < n and dn[i] == " ":
            i += 1
        while i < n and dn[i] not in ",+;":
            char = dn[i]
            if char == "\\":
                if _HEX.fullmatch(dn[i + 1 : i + 3]):
                    value.append(int(dn[i + 1 : i + 3], 16))
                    i += 3
                elif i + 1 < n:
                    value.extend(dn[i + 1].encode())
                    i += 2
                else:
                    raise ValueError("a DN cannot end with '\\'")
                trailing = 0
                continue
            trailing = trailing + 1 if char == " " else 0
            value.extend(char.encode())
            i += 1
        text = bytes(value[: len(value) - trailing] if trailing else value)
        pairs.append((attribute.lower(), text.decode("utf-8", "replace")))
        if i >= n or dn[i] in ",;":
            rdns.append(pairs)
            pairs = []
        if i >= n:
            return rdns
        i += 1


def group_name(dn: str) -> str | None:
    """`cn=developers,ou=groups,...` -> `developers`; None if the DN is unusable."""
    try:
        rdns = split_dn(dn)
    except ValueError:
        return None
    return rdns[0][0][1] if rdns and rdns[0] and rdns[0][0][1] else None


def _normal(rdns: list[list[tuple[str, str]]]) -> list[frozenset[tuple[str, str]]]:
    return [frozenset((a, " ".join(v.lower().split())) for a, v in rdn) for rdn in rdns]


def dn_under(dn: str, base: str) -> bool:
    """Whether `dn` is `base` or below it (attribute names and values compared loosely)."""
    try:
        entry, suffix = _normal(split_dn(dn)), _normal(split_dn(base))
    except ValueError:
        return False
    return len(entry) >= len(suffix) and entry[len(entry) - len(suffix) :] == suffix


def fill_template(template: str, escape: Callable[[str], str], **values: str) -> str:
    """Replace {name} placeholders in one pass (a value containing "{dn}" stays as it is)."""
    return _PLACEHOLDER_RE.sub(lambda m: escape(values[m.group(1)]), template)


def acceptable_user(user: str, settings: LdapSettings) -> bool:
    """Names no directory entry can have are refused before any request."""
    if not user or len(user) > MAX_USER_LENGTH or user != user.strip() or not user.isprintable():
        return False
    try:
        user.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes from the Basic header
        return False
    if settings.user_dn_template is not None and not settings.template_is_dn:
        return not (_NOT_IN_BIND_NAMES & set(user))
    return True
