"""`parse_ldap_settings`: every problem as file:line, defaults, secrets kept out of repr; and the
DN helpers that turn memberOf values into group names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from proxy.authn.ldap_settings import (
    LdapSettings,
    dn_under,
    group_name,
    parse_ldap_settings,
    split_dn,
)
from proxy.core.problems import Problem

SOURCE = "regproxy.yaml"
SEARCH = "ldap:\n  url: ldaps://ldap.example.org\n  user_base: ou=people,dc=example,dc=org\n"


def section(text: str) -> tuple[dict[str, Any], dict[str, int]]:
    """The `ldap:` mapping of a YAML text -> (values, line of each key and of `ldap`)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    assert isinstance(root, yaml.MappingNode)
    for key_node, value_node in root.value:
        if key_node.value == "ldap":
            values = yaml.SafeLoader("").construct_object(value_node, deep=True)
            lines = {"ldap": key_node.start_mark.line + 1}
            if isinstance(value_node, yaml.MappingNode):
                lines.update({k.value: k.start_mark.line + 1 for k, _ in value_node.value})
            return values, lines
    raise AssertionError("no ldap: section")


def parse(text: str, base_dir: Path | None = None) -> tuple[LdapSettings | None, list[Problem]]:
    values, lines = section(text)
    return parse_ldap_settings(values, SOURCE, lines, base_dir=base_dir)


def problems_of(text: str, base_dir: Path | None = None) -> list[str]:
    settings, problems = parse(text, base_dir)
    assert (settings is None) == bool(problems)
    return [str(p) for p in problems]


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


def test_minimal_search_config_and_its_defaults() -> None:
    settings, problems = parse(SEARCH)
    assert problems == [] and settings is not None
    assert [url.text for url in settings.urls] == ["ldaps://ldap.example.org"]
    assert settings.urls[0].port == 636 and settings.urls[0].tls
    assert settings.search and settings.user_filter == "(uid={user})"
    assert settings.user_scope == "subtree" and settings.group_name_attribute == "cn"
    assert (settings.timeout, settings.pool_size, settings.cache_ttl) == (5.0, 4, 60.0)
    assert settings.bind_dn is None and settings.member_of_attribute is None


def test_full_config(tmp_path: Path, ca_file: Path) -> None:
    (tmp_path / "bind.pw").write_text("s3cret:pw\n")
    text = f"""\
ldap:
  url: [ldap://ldap1.example.org:3389, "ldap://[2001:db8::1]"]
  start_tls: true
  ca_file: {ca_file}
  bind_dn: cn=regproxy,ou=services,dc=example,dc=org
  bind_password_file: bind.pw
  user_base: ou=people,dc=example,dc=org
  user_filter: "(&(sAMAccountName={{user}})(!(userAccountControl:1.2.840.113556.1.4.803:=2)))"
  user_scope: one
  member_of_attribute: memberOf
  group_base: ou=groups,dc=example,dc=org
  group_filter: "(member:1.2.840.113556.1.4.1941:={{dn}})"
  group_scope: base
  group_name_attribute: sAMAccountName
  timeout: 2.5
  pool_size: 8
  cache_ttl: 0
"""
    settings, problems = parse(text, base_dir=tmp_path)
    assert problems == [] and settings is not None
    assert [(u.host, u.port, u.tls) for u in settings.urls] == [
        ("ldap1.example.org", 3389, False),
        ("2001:db8::1", 389, False),
    ]
    assert settings.bind_password == "s3cret:pw"  # the trailing newline is not part of it
    assert settings.bind_password_file == tmp_path / "bind.pw"
    assert (settings.user_scope, settings.group_scope) == ("one", "base")
    assert (settings.timeout, settings.pool_size, settings.cache_ttl) == (2.5, 8, 0.0)
    assert settings.budget == 2.5 * 3
    assert settings.user_name_attributes == ("sAMAccountName",)  # read off the filter


@pytest.mark.parametrize(
    ("lines", "names"),
    [
        ("  user_base: dc=x\n", ("uid",)),
        ("  user_base: dc=x\n  user_filter: '(|(uid={user})(mail={user}))'\n", ("uid", "mail")),
        ("  user_base: dc=x\n  user_filter: '(&(objectClass=person)(cn={user}))'\n", ("cn",)),
        ("  user_base: dc=x\n  user_filter: '(x=a{user})'\n  user_name_attribute: [x, y]\n",
         ("x", "y")),
        ("  user_base: dc=x\n  exact_user_name: false\n", ()),
        ("  user_dn_template: 'uid={user},dc=x'\n", ("uid",)),
        ("  user_dn_template: 'CN={user},dc=x'\n", ("cn",)),
        ("  user_dn_template: 'uid={user},dc=x'\n  exact_user_name: false\n", ()),
        ("  user_dn_template: 'cn=x,uid={user},dc=x'\n  user_name_attribute: uid\n", ("uid",)),
    ],
)  # fmt: skip
def test_which_attribute_holds_the_login_name(lines: str, names: tuple[str, ...]) -> None:
    settings, problems = parse("ldap:\n  url: ldaps://a\n" + lines)
    assert problems == [] and settings is not None
    assert settings.user_name_attributes == names


def test_direct_bind_config() -> None:
    text = "ldap:\n  url: ldap://127.0.0.1\n  user_dn_template: uid={user},ou=people,dc=x\n"
    settings, problems = parse(text)
    assert problems == [] and settings is not None
    assert not settings.search and settings.template_is_dn
    ad = "ldap:\n  url: ldaps://dc1\n  user_dn_template: '{user}@corp.example.org'\n"
    ad += "  exact_user_name: false\n"
    settings, problems = parse(ad)
    assert problems == [] and settings is not None and not settings.template_is_dn
    # Active Directory also takes user@domain (not a DN) for the service account.
    ad += "  bind_dn: svc-regproxy@corp.example.org\n  bind_password: pw\n"
    settings, problems = parse(ad)
    assert problems == [] and settings is not None
    assert settings.bind_dn == "svc-regproxy@corp.example.org"


def test_password_never_shown() -> None:
    text = SEARCH + "  bind_dn: cn=svc,dc=example,dc=org\n  bind_password: hunter2-secret\n"
    settings, problems = parse(text)
    assert problems == [] and settings is not None
    assert settings.bind_password == "hunter2-secret"
    assert "hunter2" not in repr(settings) and "bind_password='***'" in repr(settings)
    assert "hunter2" not in str(settings)
    bad = SEARCH + "  bind_dn: cn=svc,dc=example,dc=org\n  bind_password: 123456\n"
    assert "123456" not in " ".join(problems_of(bad))  # an unquoted number: not echoed


def test_relative_password_file_follows_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-the-config-dir")
    text = SEARCH + "  bind_dn: cn=svc,dc=example,dc=org\n  bind_password_file: pw\n"
    values, lines = section(text)
    settings, problems = parse_ldap_settings(values, str(tmp_path / "regproxy.yaml"), lines)
    assert problems == [] and settings is not None
    assert settings.bind_password == "from-the-config-dir"


CASES: list[tuple[str, str, list[str]]] = [
    # (name, YAML, expected problems: "line: text" substrings, all of them, in order)
    ("unknown key", SEARCH + "  usr_filter: (uid={user})\n", ["4: unknown key 'usr_filter'"]),
    ("not a mapping", "ldap: ldaps://x\n", ["1: ldap: expected a mapping"]),
    ("no url", "ldap:\n  user_base: dc=x\n", ["1: ldap: url is required"]),
    ("url scheme", "ldap:\n  url: https://x\n  user_base: dc=x\n",
     ["2: url: expected ldap://HOST[:PORT] or ldaps://HOST[:PORT]"]),
    ("url with a DN", "ldap:\n  url: ldaps://x/dc=example\n  user_base: dc=x\n",
     ["2: url: expected ldap://"]),
    ("url port", "ldap:\n  url: ldaps://x:70000\n  user_base: dc=x\n", ["2: url: port 70000"]),
    ("url not text", "ldap:\n  url: 389\n  user_base: dc=x\n", ["2: url: expected a non-empty"]),
    ("url empty list", "ldap:\n  url: []\n  user_base: dc=x\n", ["2: url: expected a URL or"]),
    ("bad IPv6", "ldap:\n  url: 'ldap://[1::2::3]'\n  user_base: dc=x\n", ["2: url: bad IPv6"]),
    ("clear text to a remote host", "ldap:\n  url: ldap://ldap.example.org\n  user_base: dc=x\n",
     ["2: ldap://ldap.example.org would send passwords in clear text"]),
    ("clear text in a list", "ldap:\n  url: [ldaps://a, ldap://b]\n  user_base: dc=x\n",
     ["2: ldap://b would send passwords in clear text"]),
    ("ldaps and start_tls", "ldap:\n  url: ldaps://a\n  start_tls: true\n  user_base: dc=x\n",
     ["3: start_tls is for ldap:// URLs"]),
    ("start_tls not a bool", "ldap:\n  url: ldap://a\n  start_tls: 'yes'\n  user_base: dc=x\n",
     ["3: start_tls: expected true or false"]),
    ("allow_insecure not a bool",
     "ldap:\n  url: ldap://a\n  allow_insecure: 1\n  user_base: dc=x\n",
     ["3: allow_insecure: expected true or false"]),
    ("neither search nor template", "ldap:\n  url: ldaps://a\n",
     ["1: ldap: set user_base (search-then-bind) or user_dn_template"]),
    ("filter without base", "ldap:\n  url: ldaps://a\n  user_filter: (uid={user})\n",
     ["3: ldap: set user_base"]),
    ("both search and template",
     SEARCH + "  user_dn_template: uid={user},dc=x\n",
     ["3: user_base is for search-then-bind: use user_base (search) or user_dn_template"]),
    ("filter with template",
     "ldap:\n  url: ldaps://a\n  user_dn_template: uid={user},dc=x\n  user_filter: (uid={user})\n",
     ["4: user_filter is for search-then-bind"]),
    ("filter without {user}", SEARCH + "  user_filter: (uid=alice)\n",
     ["4: user_filter: must contain {user}"]),
    ("filter placeholder typo", SEARCH + "  user_filter: (uid={username})\n",
     ["4: user_filter: unknown placeholder {username} (use {user})"]),
    ("filter {dn} not allowed", SEARCH + "  user_filter: (member={dn})\n",
     ["4: user_filter: unknown placeholder {dn}"]),
    ("filter syntax", SEARCH + "  user_filter: uid={user}\n",
     ["4: user_filter: not an LDAP filter"]),
    ("filter unbalanced", SEARCH + "  user_filter: (&(uid={user})\n",
     ["4: user_filter: not an LDAP filter"]),
    ("scope", SEARCH + "  user_scope: sub\n", ["4: user_scope: expected base, one or subtree"]),
    ("template without {user}",
     "ldap:\n  url: ldaps://a\n  user_dn_template: uid=alice,dc=x\n",
     ["3: user_dn_template: must contain {user}"]),
    ("template not a DN", "ldap:\n  url: ldaps://a\n  user_dn_template: uid={user},dc\n",
     ["3: user_dn_template: not a DN"]),
    ("base not a DN", "ldap:\n  url: ldaps://a\n  user_base: people\n", ["3: user_base: not a DN"]),
    ("bind_dn without password", SEARCH + "  bind_dn: cn=svc,dc=x\n",
     ["4: bind_dn needs bind_password or bind_password_file"]),
    ("password without bind_dn", SEARCH + "  bind_password: pw\n",
     ["4: bind_password without bind_dn"]),
    ("password and file",
     SEARCH + "  bind_dn: cn=svc,dc=x\n  bind_password: pw\n  bind_password_file: /etc/pw\n",
     ["6: use bind_password or bind_password_file, not both"]),
    ("password file missing",
     SEARCH + "  bind_dn: cn=svc,dc=x\n  bind_password_file: /nonexistent/pw\n",
     ["5: bind_password_file: cannot read /nonexistent/pw"]),
    ("password with a newline", SEARCH + '  bind_dn: cn=svc,dc=x\n  bind_password: "a\\nb"\n',
     ["5: bind_password: line breaks or NUL"]),
    ("password empty", SEARCH + '  bind_dn: cn=svc,dc=x\n  bind_password: ""\n',
     ["5: bind_password: expected a non-empty string"]),
    ("ca_file missing", SEARCH + "  ca_file: /nonexistent/ca.pem\n",
     ["4: ca_file: no such file: /nonexistent/ca.pem"]),
    ("ca_file without TLS",
     "ldap:\n  url: ldap://127.0.0.1\n  ca_file: CA\n  user_base: dc=x\n",
     ["3: ca_file is set but no URL uses TLS"]),
    ("group_filter without base", SEARCH + "  group_filter: (member={dn})\n",
     ["4: group_filter needs group_base"]),
    ("group_base alone", SEARCH + "  group_base: ou=groups,dc=x\n",
     ["4: group_base needs group_filter or member_of_attribute"]),
    ("group_scope without a search", SEARCH + "  member_of_attribute: memberOf\n"
     "  group_base: ou=groups,dc=x\n  group_scope: one\n",
     ["6: group_scope applies to the group search"]),
    ("group filter placeholder", SEARCH + "  group_base: dc=x\n  group_filter: (member={uid})\n",
     ["5: group_filter: unknown placeholder {uid} (use {user} and {dn})"]),
    ("group filter without placeholder", SEARCH + "  group_base: dc=x\n  group_filter: (cn=a)\n",
     ["5: group_filter: must contain {user} or {dn}"]),
    ("attribute name", SEARCH + "  member_of_attribute: member of\n",
     ["4: member_of_attribute: not an attribute name"]),
    ("memberOf with a UPN template",
     "ldap:\n  url: ldaps://a\n  user_dn_template: '{user}@corp'\n"
     "  member_of_attribute: memberOf\n",
     ["4: member_of_attribute needs the user's entry"]),
    ("{dn} with a UPN template",
     "ldap:\n  url: ldaps://a\n  user_dn_template: '{user}@corp'\n  group_base: dc=x\n"
     "  group_filter: (member={dn})\n  exact_user_name: false\n",
     ["5: {dn} needs the user's entry"]),
    ("UPN template needs exact_user_name: false",
     "ldap:\n  url: ldaps://a\n  user_dn_template: '{user}@corp'\n",
     ["3: user_dn_template is not a DN, so the login name cannot be checked"]),
    ("UPN template and a name attribute",
     "ldap:\n  url: ldaps://a\n  user_dn_template: '{user}@corp'\n  user_name_attribute: uid\n",
     ["4: user_dn_template is not a DN, so the login name cannot be checked"]),
    ("name attribute without the check",
     SEARCH + "  exact_user_name: false\n  user_name_attribute: uid\n",
     ["5: user_name_attribute is for exact_user_name: true"]),
    ("filter with no plain name attribute", SEARCH + "  user_filter: (uid=x-{user})\n",
     ["4: cannot tell which attribute of the user_filter holds the login name"]),
    ("template whose first RDN is not the name",
     "ldap:\n  url: ldaps://a\n  user_dn_template: cn=x,uid={user},dc=x\n",
     ["3: cannot tell which attribute holds the login name"]),
    ("exact_user_name not a bool", SEARCH + "  exact_user_name: 'no'\n",
     ["4: exact_user_name: expected true or false"]),
    ("name attribute not a name", SEARCH + "  user_name_attribute: [uid, 'a b']\n",
     ["4: user_name_attribute: not an attribute name"]),
    ("timeout zero", SEARCH + "  timeout: 0\n", ["4: timeout: expected more than 0"]),
    ("timeout text", SEARCH + "  timeout: 5s\n", ["4: timeout: expected a number of seconds"]),
    ("timeout bool", SEARCH + "  timeout: true\n", ["4: timeout: expected a number"]),
    ("pool_size zero", SEARCH + "  pool_size: 0\n", ["4: pool_size: expected a whole number"]),
    ("pool_size huge", SEARCH + "  pool_size: 1000\n", ["4: pool_size: expected a whole number"]),
    ("pool_size float", SEARCH + "  pool_size: 2.5\n", ["4: pool_size: expected a whole number"]),
    ("cache_ttl negative", SEARCH + "  cache_ttl: -1\n", ["4: cache_ttl: expected 0 and at most"]),
    ("cache_ttl too long", SEARCH + "  cache_ttl: 86400\n", ["4: cache_ttl: expected 0 and at"]),
    ("everything at once",
     "ldap:\n  url: http://x\n  bind_dn: cn=a,,dc=x\n  user_scope: all\n  timeout: -3\n"
     "  colour: blue\n",
     ["2: url:", "3: bind_dn: not a DN", "3: bind_dn needs bind_pass", "4: user_scope:",
      "4: ldap: set user_base", "5: timeout:", "6: unknown key"]),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_problems(text: str, expected: list[str], ca_file: Path) -> None:
    problems = problems_of(text.replace("ca_file: CA", f"ca_file: {ca_file}"))
    assert len(problems) == len(expected), problems
    for problem, want in zip(problems, expected, strict=True):
        assert problem.startswith(f"{SOURCE}:"), problem
        assert want in problem, (want, problems)


def test_unreadable_or_bad_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    two_lines = tmp_path / "two"
    two_lines.write_text("a\nb\n")
    not_a_ca = tmp_path / "ca.pem"
    not_a_ca.write_text("hello\n")
    text = f"{SEARCH}  bind_dn: cn=svc,dc=x\n  bind_password_file: {empty}\n"
    text += f"  ca_file: {not_a_ca}\n"
    problems = problems_of(text)
    assert any(p.startswith(f"{SOURCE}:5: bind_password_file: {empty} is empty") for p in problems)
    assert any(p.startswith(f"{SOURCE}:6: ca_file: no usable CA certificate") for p in problems)
    text = f"{SEARCH}  bind_dn: cn=svc,dc=x\n  bind_password_file: {two_lines}\n"
    assert problems_of(text) == [
        f"{SOURCE}:5: bind_password_file: {two_lines} must hold the password alone on one line"
    ]
    assert problems_of(f"{SEARCH}  bind_dn: cn=svc,dc=x\n  bind_password_file: {tmp_path}\n")


@pytest.mark.parametrize(
    "url",
    ["ldap://127.0.0.1", "ldap://localhost:3389", "ldap://[::1]:389", "ldap://127.1.2.3"],
)
def test_clear_text_is_fine_on_loopback(url: str) -> None:
    assert problems_of(f"ldap:\n  url: '{url}'\n  user_base: dc=x\n") == []


@pytest.mark.parametrize(
    "extra", ["  start_tls: true\n", "  allow_insecure: true\n"], ids=["start_tls", "insecure"]
)
def test_clear_text_to_a_remote_host_needs_a_choice(extra: str) -> None:
    assert problems_of("ldap:\n  url: ldap://ldap.example.org\n  user_base: dc=x\n" + extra) == []


@pytest.mark.parametrize(
    ("url", "extra", "address", "refused"),
    [
        ("ldap://localhost", "", "127.0.0.1", False),
        ("ldap://localhost", "", "::1", False),
        ("ldap://localhost", "", "::ffff:127.0.0.1", False),
        ("ldap://localhost", "", "fe80::1%eth0", True),
        ("ldap://localhost", "", "192.0.2.10", True),  # a `localhost` that leads elsewhere
        ("ldap://localhost", "", "::ffff:192.0.2.10", True),
        ("ldap://localhost", "", "not an address", True),
        ("ldap://localhost", "  allow_insecure: true\n", "192.0.2.10", False),
        ("ldap://localhost", "  start_tls: true\n", "192.0.2.10", False),
        ("ldaps://localhost", "", "192.0.2.10", False),
        ("ldap://ldap.example.org", "  allow_insecure: true\n", "192.0.2.10", False),
    ],
)
def test_clear_text_goes_only_where_the_settings_allow(
    url: str, extra: str, address: str, refused: bool
) -> None:
    """`allow_insecure` is what lets a password go in clear text to another host: checked on
    the host's name when the settings are read, and on each address it resolves to."""
    settings, problems = parse(f"ldap:\n  url: '{url}'\n  user_base: dc=x\n" + extra)
    assert settings is not None, problems
    assert settings.clear_text_refused(settings.urls[0], address) is refused


def test_lines_without_the_ldap_key_fall_back_to_the_line_before_the_first_key() -> None:
    values, lines = section("x: 1\nldap:\n  user_base: dc=x\n")
    del lines["ldap"]
    _, problems = parse_ldap_settings(values, SOURCE, lines)
    assert [str(p) for p in problems] == [
        f"{SOURCE}:2: ldap: url is required (ldaps://HOST or ldap://HOST with start_tls)"
    ]


# -- DN helpers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dn", "name"),
    [
        ("cn=developers,ou=groups,dc=example,dc=org", "developers"),
        ("CN=Domain Users,CN=Users,DC=corp,DC=example,DC=org", "Domain Users"),
        ("cn=release team , ou=groups", "release team"),
        (r"cn=ops\, east,ou=groups", "ops, east"),
        (r"cn=caf\C3\A9,ou=groups", "café"),
        (r"cn=a\+b+sn=x,ou=groups", "a+b"),
        (r"cn=\#hash,ou=g", "#hash"),
        ("not a dn", None),
        ("", None),
        ("cn=,ou=g", None),
    ],
)
def test_group_name(dn: str, name: str | None) -> None:
    assert group_name(dn) == name


def test_split_dn_rejects_what_is_not_a_dn() -> None:
    for bad in ("cn", "cn=a,", "cn=a\\", "c n=a", "=a"):
        with pytest.raises(ValueError):
            split_dn(bad)
    assert split_dn("cn=a+sn=b,dc=x") == [[("cn", "a"), ("sn", "b")], [("dc", "x")]]


def test_dn_under() -> None:
    base = "ou=groups,dc=example,dc=org"
    assert dn_under("cn=pusher,ou=groups,dc=example,dc=org", base)
    assert dn_under("CN=Pusher, OU=Groups, DC=Example, DC=Org", base)
    assert dn_under(base, base)
    assert not dn_under("cn=pusher,ou=otherapp,dc=example,dc=org", base)
    assert not dn_under("cn=pusher,ou=groups,dc=example,dc=com", base)
    assert not dn_under("cn=x,ou=groups2,dc=example,dc=org", base)
    assert not dn_under("dc=org", base)
    assert not dn_under("garbage", base)
