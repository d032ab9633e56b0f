"""Property-based fuzzing of every parser that reads what users or clients write: whatever
the input, a clean answer or the module's own error, never another exception.
`make fuzz` runs these (and the classifier's) with the long profile."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from proxy.authn.credentials import (
    MalformedCredentials,
    parse_basic_auth,
    parse_groups,
    parse_htpasswd,
)
from proxy.conf.config import load
from proxy.core.addresses import origin, parse_networks
from proxy.core.problems import ConfigError
from proxy.policy.acl import parse_acl_text
from proxy.tokenserver.scopes import parse_scopes

LINES = st.lists(
    st.one_of(
        st.text(max_size=80),
        st.from_regex(r"[a-z]{1,8}:\$(2y|2b|apr1|5|6)\$[./A-Za-z0-9$=]{0,60}", fullmatch=True),
        st.from_regex(r"[a-z]{1,8}: ?([a-z]{1,6} ?){0,4}", fullmatch=True),
    ),
    max_size=12,
)


@given(LINES)
def test_user_files_never_raise(lines: list[str]) -> None:
    text = "\n".join(lines)
    parsed = parse_htpasswd(text, "htpasswd")
    count = text.count("\n") + 1
    assert all(1 <= p.line <= count for p in parsed.problems)
    assert all(":" not in user and not user[:1].isspace() for user in parsed.users)
    groups, problems = parse_groups(text, "groups")
    assert all(1 <= p.line <= count for p in problems)
    assert all(":" not in g for g in groups)


YAMLISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(["users", "groups", "repositories", "actions", "anonymous",
                             "networks", "upstream", "acl", "listen", "tls", "cert",
                             "timeouts", "read", "workers", "token", "ldap", "x"]),
            inner, max_size=4,
        ),
    ),
    max_leaves=12,
)  # fmt: skip


def to_yaml(value: object) -> str:
    import yaml

    return str(yaml.safe_dump(value))


@given(st.one_of(YAMLISH.map(to_yaml), st.text(max_size=200)))
def test_acl_text_never_raises(text: str) -> None:
    rules, problems = parse_acl_text(text, "acl.yaml")
    assert rules == () or all(r.origin.startswith("acl.yaml:") for r in rules)
    assert all(p.source == "acl.yaml" for p in problems)


@given(st.one_of(YAMLISH.map(to_yaml), st.text(max_size=200)))
def test_config_load_raises_only_config_errors(text: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "regproxy.yaml"
        path.write_text(text)
        try:
            load(path)
        except ConfigError as exc:
            # Every problem names a file (the config, or one it names) and says something.
            assert exc.problems
            assert all(p.source.startswith(directory) and p.message for p in exc.problems)


@given(st.lists(st.text(max_size=120), max_size=3))
def test_authorization_headers(values: list[str]) -> None:
    try:
        result = parse_basic_auth(values)
    except MalformedCredentials:
        return
    assert result is None or (isinstance(result[0], str) and isinstance(result[1], str))


@given(st.lists(st.text(max_size=60), max_size=4), st.ip_addresses())
def test_forwarded_for_never_raises(values: list[str], peer: object) -> None:
    trusted = parse_networks(["10.0.0.0/8", "::1/128"])
    result = origin(str(peer), values, trusted)
    assert isinstance(result.address, ipaddress.IPv4Address | ipaddress.IPv6Address)
    mapped = getattr(peer, "ipv4_mapped", None)  # ::ffff:a.b.c.d is read as a.b.c.d
    assert result.forwarded_for.endswith(str(mapped or peer))


@given(st.lists(st.text(max_size=80), max_size=4))
def test_token_scopes_never_raise(values: list[str]) -> None:
    for scope in parse_scopes(values):
        assert scope.type in ("registry", "repository") or scope.type.startswith("repository(")
