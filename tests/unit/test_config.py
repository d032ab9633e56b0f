"""Unit tables for proxy.conf.config.load: defaults, every key, path
resolution, flag overrides, and every error reported at once as file:line."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from proxy.authn.throttle import ThrottleSettings as Throttle
from proxy.conf.config import FLAG_KEYS, Config, Listen, default_workers, load
from proxy.core.limits import Limits, Timeouts
from proxy.core.problems import ConfigError, Problem
from proxy.policy.rules import recipe_rules


def write(tmp_path: Path, text: str | bytes, name: str = "regproxy.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path | None, overrides: dict[str, object] | None = None) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        load(path, overrides)
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)
    return info.value.problems


# --------------------------------------------------------------------------------------------
# Defaults and every key
# --------------------------------------------------------------------------------------------


def test_defaults() -> None:
    config = load(None)
    assert config == Config()
    assert config == load(None, {})
    assert config.listen == Listen("127.0.0.1", 5043)
    assert str(config.listen) == "127.0.0.1:5043"
    assert config.upstream == "http://127.0.0.1:5000"
    assert config.htpasswd == Path("conf/htpasswd")
    assert config.groups == Path("conf/groups")
    assert config.tls_cert == Path("certs/server.crt")
    assert config.tls_key == Path("certs/server.key")
    assert config.workers == default_workers() == len(os.sched_getaffinity(0))
    assert config.log_level == "info"
    assert config.realm == "Registry Authentication"
    assert config.push_group == "pusher"
    assert config.access_log == "common"
    assert config.access_log_path is None
    assert config.timeouts == Timeouts(connect=5.0, read=300.0, drain=30.0, keepalive=75.0)
    assert config.throttle == Throttle(attempts=5, window=300.0, max_delay=900.0)
    assert config.trusted_proxies == ()
    assert config.audit_log is None
    assert config.acl is None
    assert config.source is None
    assert config.rules == recipe_rules("pusher")
    assert not any(p.is_absolute() for p in config.watched_files())


EVERY_KEY = """\
listen: "[::1]:6000"
upstream: https://registry.internal:5443/
htpasswd: users/htpasswd
groups: users/groups
push_group: admins
realm: My Registry (prod)
tls:
  cert: tls/server.crt
  key: /etc/ssl/private/server.key
workers: 4
log_level: DEBUG
access_log:
  format: JSON
  path: logs/access.log
timeouts:
  connect: 1.5
  read: 60
  drain: 10
  keepalive: 5
throttle:
  attempts: 3
  window: 60
  max_delay: 120.5
trusted_proxies: [10.0.0.0/8, "::1/128"]
audit_log: ../audit.log
"""


def test_every_key(tmp_path: Path) -> None:
    path = write(tmp_path, EVERY_KEY)
    config = load(path)
    assert config == Config(
        listen=Listen("::1", 6000),
        upstream="https://registry.internal:5443",
        htpasswd=tmp_path / "users/htpasswd",
        groups=tmp_path / "users/groups",
        tls_cert=tmp_path / "tls/server.crt",
        tls_key=Path("/etc/ssl/private/server.key"),
        workers=4,
        log_level="debug",
        realm="My Registry (prod)",
        push_group="admins",
        access_log="json",
        access_log_path=tmp_path / "logs/access.log",
        timeouts=Timeouts(connect=1.5, read=60.0, drain=10.0, keepalive=5.0),
        throttle=Throttle(attempts=3, window=60.0, max_delay=120.5),
        trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")),
        audit_log=tmp_path.parent / "audit.log",  # shown normalised
        source=path,
    )
    assert str(config.listen) == "[::1]:6000"
    assert isinstance(config.timeouts.read, float)
    assert config.rules == recipe_rules("admins")
    assert config.watched_files() == (
        tmp_path / "users/htpasswd",
        tmp_path / "tls/server.crt",
        Path("/etc/ssl/private/server.key"),
        tmp_path / "users/groups",
        path,
    )


LAN = (ipaddress.ip_network("192.168.0.0/16"),)


@pytest.mark.parametrize(
    ("yaml_text", "attribute", "expected"),
    [
        ("groups: null", "groups", None),
        ("cache:\n  ttl: 0", "cache_ttl", 0.0),
        ("cache:\n  ttl: 2.5", "cache_ttl", 2.5),
        ("groups: ~", "groups", None),
        ("access_log:\n  path: null", "access_log_path", None),
        ("audit_log: null", "audit_log", None),
        ("access_log:\n  format: off", "access_log", "off"),  # YAML 1.1 `off` is False
        ("access_log:\n  format: 'off'", "access_log", "off"),
        ("access_log:\n  format: combined", "access_log", "combined"),
        ("log_level: CRITICAL", "log_level", "critical"),
        ("log_level: warning", "log_level", "warning"),
        ("listen: 0.0.0.0:65535", "listen", Listen("0.0.0.0", 65535)),
        ("listen: localhost:1", "listen", Listen("localhost", 1)),
        ("listen: '[::]:443'", "listen", Listen("::", 443)),
        ("listen: '[::ffff:127.0.0.1]:5043'", "listen", Listen("::ffff:127.0.0.1", 5043)),
        ("upstream: http://registry:5000", "upstream", "http://registry:5000"),
        ("upstream: https://r.example.com///", "upstream", "https://r.example.com"),
        ("upstream: 'http://[::1]:5000'", "upstream", "http://[::1]:5000"),
        ("workers: 64", "workers", 64),
        ("realm: Registry ünïcode", "realm", "Registry ünïcode"),
        ("push_group: docker-pushers", "push_group", "docker-pushers"),
        ("trusted_proxies: 192.168.0.0/16", "trusted_proxies", LAN),
        ("limits:\n  connections_per_address: 3", "limits", Limits(connections_per_address=3)),
        ("limits:\n  connections_per_address: auto", "limits", Limits()),
    ],
)  # fmt: skip
def test_single_key(tmp_path: Path, yaml_text: str, attribute: str, expected: object) -> None:
    assert getattr(load(write(tmp_path, yaml_text + "\n")), attribute) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("\n\n", id="blank"),
        pytest.param("# only a comment\n", id="comment"),
        pytest.param("---\n", id="document-start"),
        pytest.param("{}\n", id="empty-mapping"),
    ],
)
def test_empty_file_gives_defaults(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    assert load(path) == Config(source=path)


def test_reference_config_loads() -> None:
    """The shipped reference file documents every key with its default."""
    path = Path(__file__).resolve().parents[2] / "conf" / "regproxy.reference.yaml"
    config = load(path)
    assert config.listen == Config().listen
    assert config.upstream == Config().upstream
    assert config.timeouts == Config().timeouts
    assert config.limits == Config().limits
    assert config.throttle == Config().throttle
    assert config.htpasswd == path.parent / "htpasswd"


# --------------------------------------------------------------------------------------------
# Relative paths and overrides
# --------------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    conf = tmp_path / "etc" / "regproxy"
    conf.mkdir(parents=True)
    path = write(
        conf,
        "htpasswd: htpasswd\ngroups: ./sub/groups\ntls:\n  cert: ../certs/s.crt\n"
        "  key: /abs/s.key\naccess_log:\n  path: log/access.log\naudit_log: audit.jsonl\n",
    )
    config = load(path)
    assert config.htpasswd == conf / "htpasswd"
    assert config.groups == conf / "sub/groups"
    assert config.tls_cert == conf.parent / "certs/s.crt"  # normalised: no "conf/.."
    assert config.tls_key == Path("/abs/s.key")
    assert config.access_log_path == conf / "log/access.log"
    assert config.audit_log == conf / "audit.jsonl"


def test_relative_config_path_keeps_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf", "htpasswd: users\n")
    config = load(Path("conf/regproxy.yaml"))
    assert config.htpasswd == Path("conf/users")
    assert config.source == Path("conf/regproxy.yaml")


def test_overrides_win_and_are_relative_to_the_cwd(tmp_path: Path) -> None:
    path = write(tmp_path, EVERY_KEY)
    config = load(
        path,
        {
            "listen": "127.0.0.2:7000",
            "upstream": "http://other:5000",
            "htpasswd": "flag/htpasswd",
            "groups": "flag/groups",
            "tls.cert": "flag/c.crt",
            "tls.key": "/abs/flag.key",
            "workers": 2,
            "log_level": "error",
        },
    )
    assert config.listen == Listen("127.0.0.2", 7000)
    assert config.upstream == "http://other:5000"
    assert config.htpasswd == Path("flag/htpasswd")
    assert config.groups == Path("flag/groups")
    assert config.tls_cert == Path("flag/c.crt")
    assert config.tls_key == Path("/abs/flag.key")
    assert config.workers == 2
    assert config.log_level == "error"
    # keys without a flag keep the file's values
    assert config.push_group == "admins"
    assert config.access_log_path == tmp_path / "logs/access.log"
    assert config.source == path


SAMPLE_FLAG_VALUES: dict[str, tuple[object, str, object]] = {
    # YAML key -> (flag value, Config attribute, expected attribute value)
    "listen": ("[::1]:9999", "listen", Listen("::1", 9999)),
    "upstream": ("https://up:1", "upstream", "https://up:1"),
    "htpasswd": ("h", "htpasswd", Path("h")),
    "groups": ("g", "groups", Path("g")),
    "tls.cert": ("c", "tls_cert", Path("c")),
    "tls.key": ("k", "tls_key", Path("k")),
    "workers": (7, "workers", 7),
    "log_level": ("DEBUG", "log_level", "debug"),
}


@pytest.mark.parametrize(("flag", "key"), sorted(FLAG_KEYS.items()))
def test_every_flag_key_is_a_config_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: str, key: str
) -> None:
    monkeypatch.chdir(tmp_path)
    if key == "acl":
        write(tmp_path, "- users: [alice]\n  actions: [pull]\n", name="acl.yaml")
        config = load(None, {key: "acl.yaml"})
        assert config.acl_file == Path("acl.yaml")
        assert config.acl is not None and len(config.acl) == 1
        return
    value, attribute, expected = SAMPLE_FLAG_VALUES[key]
    assert getattr(load(None, {key: value}), attribute) == expected
    assert getattr(Config(), attribute) != expected


def test_the_settings_alone_leave_the_rules_unread(tmp_path: Path) -> None:
    """What `serve` reads before it binds and starts its workers: every setting, the ACL's
    rules not read, in a file or in place (a broken one, or none there, is the workers' to
    find and say)."""
    settings = write(tmp_path, "workers: 3\nacl: acl.yaml\nlisten: 127.0.0.1:6000\n")
    with pytest.raises(ConfigError, match=r"acl\.yaml: cannot read: No such file"):
        load(settings)
    alone = load(settings, read_rules=False)
    assert (alone.workers, alone.acl, alone.acl_file) == (3, (), tmp_path / "acl.yaml")
    assert str(alone.listen) == "127.0.0.1:6000"
    in_place = write(tmp_path, "workers: 2\nacl:\n  - actions: [fly]\n", name="in-place.yaml")
    with pytest.raises(ConfigError, match="unknown action"):
        load(in_place)
    unread = load(in_place, read_rules=False)
    assert (unread.acl, unread.acl_file, unread.workers) == ((), None, 2)
    broken = write(tmp_path, "acl: acl.yaml\npush_group: p\n", name="broken.yaml")
    with pytest.raises(ConfigError, match="push_group has no effect with an acl"):
        load(broken, read_rules=False)  # the settings' own problems are still found


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"listen": "nope"}, "listen: expected HOST:PORT or [IPv6]:PORT, got 'nope'"),
        ({"workers": 0}, "workers: expected a positive integer, got 0"),
        ({"upstream": "ftp://x"}, "upstream: expected http:// or https:// URL, got 'ftp://x'"),
        ({"log_level": "loud"}, "log_level: expected one of debug, info, warning, error, critical"),
        ({"htpasswd": ""}, "htpasswd: expected a file path, got ''"),
    ],
)
def test_override_errors_are_reported_as_command_line(
    overrides: dict[str, object], message: str
) -> None:
    problems = problems_of(None, overrides)
    assert len(problems) == 1
    assert (problems[0].source, problems[0].line) == ("command line", 0)
    assert problems[0].message.startswith(message)
    assert str(problems[0]).startswith("command line: ")


# --------------------------------------------------------------------------------------------
# Errors, each with file:line
# --------------------------------------------------------------------------------------------

ERRORS = [
    # unknown keys
    ("lisen: 127.0.0.1:5043", [(1, "unknown key 'lisen'")]),
    ("realm: r\nTLS:\n  cert: x", [(2, "unknown key 'TLS'")]),
    ("tls:\n  cert: a\n  certificate: b", [(3, "unknown key 'tls.certificate'")]),
    ("timeouts:\n  write: 5", [(2, "unknown key 'timeouts.write'")]),
    ("access_log:\n  fmt: json", [(2, "unknown key 'access_log.fmt'")]),
    ("throttle:\n  tries: 3", [(2, "unknown key 'throttle.tries'")]),
    ("listen:\n  host: x", [(1, "listen: expected HOST:PORT")]),
    # sections that are not mappings
    ("tls: server.crt", [(1, "tls: expected a mapping")]),
    ("timeouts: 5", [(1, "timeouts: expected a mapping")]),
    ("\naccess_log: [json]", [(2, "access_log: expected a mapping")]),
    # listen
    ("listen: localhost", [(1, "listen: expected HOST:PORT or [IPv6]:PORT, got 'localhost'")]),
    ("listen: 5043", [(1, "listen: expected HOST:PORT or [IPv6]:PORT, got '5043'")]),
    ("listen: ':5043'", [(1, "listen: expected HOST:PORT")]),
    ("listen: '::1:5043'", [(1, "listen: expected HOST:PORT")]),
    ("listen: '[::1]'", [(1, "listen: expected HOST:PORT")]),
    ("listen: '[::1]5043'", [(1, "listen: expected HOST:PORT")]),
    ("listen: 'host:5043:1'", [(1, "listen: expected HOST:PORT")]),
    ("listen: 'host:port'", [(1, "listen: expected HOST:PORT")]),
    ("listen: '127.0.0.1:-1'", [(1, "listen: expected HOST:PORT")]),
    ("listen: 127.0.0.1:0", [(1, "listen: port 0 out of range 1-65535")]),
    ("listen: '[::1]:0'", [(1, "listen: port 0 out of range 1-65535")]),
    ("listen: 127.0.0.1:65536", [(1, "listen: port 65536 out of range 1-65535")]),
    ("listen: '[::1]:65536'", [(1, "listen: port 65536 out of range 1-65535")]),
    ("listen: '[::g]:5043'", [(1, "listen: expected HOST:PORT")]),
    ("listen: '[1::2::3]:5043'", [(1, "listen: ")]),
    ("listen: '[127.0.0.1]:5043'", [(1, "listen: ")]),
    ("listen: null", [(1, "listen: expected HOST:PORT")]),
    ("listen: [::1]:5043", [(1, "invalid YAML: ")]),  # unquoted: a YAML flow sequence
    ("realm: 123", [(1, "realm: ")]),
    # upstream
    ("upstream: http://r:5000/v2", [(1, "upstream: upstream must be scheme://host[:port] only")]),
    ("upstream: http://r/path/", [(1, "upstream: upstream must be scheme://host[:port] only")]),
    ("upstream: ftp://r:21", [(1, "upstream: expected http:// or https:// URL, got 'ftp://r:21'")]),
    ("upstream: r:5000", [(1, "upstream: expected http:// or https:// URL")]),
    ("upstream: //r:5000", [(1, "upstream: expected http:// or https:// URL")]),
    ("upstream: http://", [(1, "upstream: expected http:// or https:// URL")]),
    ("upstream: http://user:pw@r:5000", [(1, "upstream: upstream must be scheme://host[:port]")]),
    ("upstream: http://user@r:5000", [(1, "upstream: upstream must be scheme://host[:port]")]),
    ("upstream: http://:pw@r:5000", [(1, "upstream: upstream must be scheme://host[:port]")]),
    ("upstream: http://@r:5000", [(1, "upstream: upstream must be scheme://host[:port]")]),
    ("upstream: http://r:5000?x=1", [(1, "upstream: upstream must be scheme://host[:port]")]),
    ("upstream: http://r:5000#frag", [(1, "upstream: upstream must be scheme://host[:port]")]),
    ("upstream: http://r:99999", [(1, "upstream: ")]),
    ("upstream: http://r:abc", [(1, "upstream: ")]),
    ("upstream: http://r:0", [(1, "upstream: ")]),
    ("upstream: 5000", [(1, "upstream: expected http:// or https:// URL")]),
    # workers and other integers
    ("workers: 0", [(1, "workers: expected a positive integer, got 0")]),
    ("workers: -2", [(1, "workers: expected a positive integer, got -2")]),
    ("workers: true", [(1, "workers: expected a positive integer, got True")]),
    ("workers: '2'", [(1, "workers: expected a positive integer, got '2'")]),
    ("workers: 2.0", [(1, "workers: expected a positive integer, got 2.0")]),
    ("workers: null", [(1, "workers: expected a positive integer, got None")]),
    ("throttle:\n  attempts: 0", [(2, "throttle.attempts: expected a positive integer")]),
    (
        "limits:\n  connections_per_address: 0",
        [(2, "limits.connections_per_address: expected auto or a positive integer, got 0")],
    ),
    # seconds
    ("timeouts:\n  connect: 0", [(2, "timeouts.connect: expected a positive number of seconds")]),
    ("timeouts:\n  read: -1", [(2, "timeouts.read: expected a positive number of seconds")]),
    ("timeouts:\n  drain: '30'", [(2, "timeouts.drain: expected a positive number of seconds")]),
    ("timeouts:\n  keepalive: true", [(2, "timeouts.keepalive: expected a positive number")]),
    ("timeouts:\n  read: .nan", [(2, "timeouts.read: expected a positive number of seconds")]),
    ("throttle:\n  window: 0", [(2, "throttle.window: expected a positive number of seconds")]),
    ("cache:\n  ttl: -1", [(2, "cache.ttl: expected 0 (off) or a positive number of seconds")]),
    ("cache:\n  ttl: false", [(2, "cache.ttl: expected 0 (off) or a positive number of seconds")]),
    ("cache:\n  ttl: '10'", [(2, "cache.ttl: expected 0 (off) or a positive number of seconds")]),
    ("cache:\n  size: 10", [(2, "unknown key 'cache.size'")]),
    # choices
    (
        "log_level: verbose",
        [(1, "log_level: expected one of debug, info, warning, error, critical")],
    ),
    ("log_level: [info]", [(1, "log_level: expected one of")]),
    ("log_level: null", [(1, "log_level: expected one of")]),
    ("access_log:\n  format: xml", [(2, "access_log.format: expected one of common, combined")]),
    # paths
    ("htpasswd: 5", [(1, "htpasswd: expected a file path, got 5")]),
    ("htpasswd: ''", [(1, "htpasswd: expected a file path, got ''")]),
    ("htpasswd: null", [(1, "htpasswd: expected a file path, got None")]),
    ("htpasswd: [a, b]", [(1, "htpasswd: expected a file path, got ['a', 'b']")]),
    ("groups: 5", [(1, "groups: expected a file path, got 5")]),
    ("groups: ''", [(1, "groups: expected a file path, got ''")]),
    ("tls:\n  key: {a: b}", [(2, "tls.key: expected a file path")]),
    ('htpasswd: "a\\0b"', [(1, "htpasswd: expected a file path")]),
    # names and realm
    ("push_group: two words", [(1, "push_group: expected a name without spaces or ':'")]),
    ("push_group: 'a:b'", [(1, "push_group: expected a name without spaces or ':'")]),
    ("push_group: ''", [(1, "push_group: expected a name without spaces or ':'")]),
    ("push_group: null", [(1, "push_group: ")]),
    ("push_group: [pushers]", [(1, "push_group: ")]),
    ("push_group: yes", [(1, "push_group: ")]),
    ("realm: 'say \"hi\"'", [(1, "realm: realm must be printable text without quotes")]),
    ("realm: 'back\\slash'", [(1, "realm: realm must be printable text without quotes")]),
    ('realm: "tab\\there"', [(1, "realm: realm must be printable text without quotes")]),
    ("realm: ''", [(1, "realm: realm must be printable text without quotes")]),
    ("realm: null", [(1, "realm: ")]),
    ("realm: [My Registry]", [(1, "realm: ")]),
    # trusted proxies
    ("trusted_proxies: 10.0.0.1/8", [(1, "trusted_proxies: ")]),
    ("trusted_proxies: [not-a-network]", [(1, "trusted_proxies: ")]),
    # duplicate keys
    ("listen: a:1\nlisten: b:2", [(2, "duplicate key 'listen'")]),
    ("tls:\n  cert: a\n  cert: b", [(3, "duplicate key 'tls.cert'")]),
    ("tls:\n  cert: a\ntls:\n  cert: b", [(3, "duplicate key 'tls'")]),
    ("timeouts:\n  read: 1\ntimeouts:\n  drain: 2", [(3, "duplicate key 'timeouts'")]),
    # not YAML, or not a mapping
    # (at the cause's line: where it was opened, or where the run-on value began)
    ("listen: [", [(1, "invalid YAML: the file ends early")]),
    ("workers: 1\nlisten: [\n\n", [(2, "invalid YAML: the file ends early")]),
    ("tls: {cert: a\nworkers: 1\n", [(1, "invalid YAML: a '{' opened on this line")]),
    ("realm: 'abc\nworkers: 1\n", [(1, "invalid YAML: a quote opened on this line")]),
    ("a: b\n  c: d", [(1, "invalid YAML: a value starts here and runs on into line 2")]),
    ("listen 127.0.0.1:5043\nworkers: 2", [(1, "invalid YAML: a value starts here")]),
    ("tls:\n  cert: a\n key: b", [(3, "invalid YAML: expected <block end>")]),
    ("tls:\n\tcert: x", [(2, "invalid YAML: ")]),
    ("workers: 2\n---\nworkers: 3", [(2, "invalid YAML: expected a single document")]),
    ("listen: *nowhere", [(1, "invalid YAML: found undefined alias 'nowhere'")]),
    ("- listen: 127.0.0.1:5043\n- workers: 2", [(1, "top level: expected a mapping")]),
    ("just a string", [(1, "top level: expected a mapping")]),
    # YAML tags that do not construct
    ("workers: !foo 2", [(1, "workers")]),
    ("timeouts:\n  read: !!float abc", [(2, "timeouts.read")]),
    ("workers: !!int two", [(1, "workers")]),
    ("listen: !!python/object:os.system x", [(1, "listen")]),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [pytest.param(text, expected, id=text.replace("\n", "|")) for text, expected in ERRORS],
)
def test_config_errors(tmp_path: Path, text: str, expected: list[tuple[int, str]]) -> None:
    path = write(tmp_path, text + "\n")
    problems = problems_of(path)
    assert [(p.source, p.line) for p in problems] == [(str(path), n) for n, _ in expected]
    for problem, (_, message) in zip(problems, expected, strict=True):
        assert problem.message.startswith(message), problem
        assert str(problem).startswith(f"{path}:{problem.line}: ")


def test_every_error_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "lisen: x\n"  # 1
        "listen: '[::1]:5043'\n"  # 2 fine
        "workers: true\n"  # 3
        "tls:\n"  # 4
        "  cert: ''\n"  # 5
        "  kee: x\n"  # 6
        "timeouts:\n"  # 7
        "  read: 0\n"  # 8
        "upstream: ftp://x\n"  # 9
        "workers: 2\n",  # 10
    )
    problems = problems_of(path, {"log_level": "loud"})
    file_problems = [(p.line, p.message.split(":")[0]) for p in problems if p.source == str(path)]
    assert file_problems == [
        (1, "unknown key 'lisen'"),
        (3, "workers"),
        (5, "tls.cert"),
        (6, "unknown key 'tls.kee'"),
        (8, "timeouts.read"),
        (9, "upstream"),
        (10, "duplicate key 'workers'"),
    ]
    assert [(p.source, p.line) for p in problems if p.source != str(path)] == [("command line", 0)]
    assert len(problems) == 8


@pytest.mark.parametrize(
    ("data", "line", "message"),
    [
        pytest.param(b"listen: 127.0.0.1:5043\nrealm: caf\xe9\n", 2, "not UTF-8 text", id="latin1"),
        pytest.param(b"\xff\xfe" + "realm: x\n".encode("utf-16-le"), 1, "not UTF-8", id="utf16"),
        pytest.param(b"a: 1\n# c\n\x00\x01\x02", 3, "binary data (NUL byte)", id="nul"),
        pytest.param(b"\x7fELF\x02\x01\x01\x00", 1, "binary data (NUL byte)", id="elf"),
    ],
)
def test_config_file_not_text(tmp_path: Path, data: bytes, line: int, message: str) -> None:
    path = write(tmp_path, data)
    problems = problems_of(path)
    assert [(p.source, p.line) for p in problems] == [(str(path), line)]
    assert problems[0].message.startswith(message)


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    problems = problems_of(path)
    assert problems == [Problem(str(path), 0, "cannot read: No such file or directory")]
