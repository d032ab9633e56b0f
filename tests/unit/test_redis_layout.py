"""The pure parts of sharing state through Redis: the key layout, stream entries and their
ages, reconnection backoff, the `state:` section, user records and `passwd --redis` fields."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.authn.credentials import identify
from proxy.authn.redis_users import UserRecord, parse_record
from proxy.cli.redis_passwd import changes
from proxy.conf.config import load
from proxy.core.problems import ConfigError
from proxy.state.events import BlobGone, LoginFailed, LoginSucceeded
from proxy.state.redis_layout import (
    BACKOFF_CAP,
    BACKOFF_FIRST,
    SENTINEL_BACKOFF_CAP,
    Keys,
    backoff,
    client_options,
    entry,
    parse_redis_url,
    parse_sentinel_addresses,
    read_entry,
    resume_id,
    sentinel_options,
    start_id,
    stream_ms,
)
from proxy.state.store import StateSettings

BCRYPT = "$2y$04$" + "a" * 53
SENTINEL = "state:\n  backend: redis\n  sentinel:\n    addresses: [s]\n    service: s\n"
APR1 = "$apr1$abcdefgh$0123456789012345678901"


def test_keys_sit_under_the_prefix_and_keep_any_user_name() -> None:
    keys = Keys("team-a:")
    assert (keys.events, keys.known_good, keys.users_version) == (
        b"team-a:events",
        b"team-a:known-good",
        b"team-a:users:version",
    )
    assert keys.lock("tag/app:v1") == b"team-a:lock:tag/app:v1"
    assert keys.user("al:ice") == b"team-a:user:al:ice"
    assert keys.user("bad\udcff") == b"team-a:user:bad\xff"  # the header's raw byte


@given(
    user=st.text(max_size=200),
    delay=st.floats(min_value=0, max_value=1e6),
    written=st.integers(min_value=0, max_value=2**48),
    seq=st.integers(min_value=0, max_value=2**32),
)
def test_an_entry_reads_back_with_when_it_happened(
    user: str, delay: float, written: int, seq: int
) -> None:
    event = LoginFailed(user.encode("utf-8", "surrogatepass").decode("utf-8", "replace"), "::1")
    read = read_entry(f"{written}-{seq}".encode(), entry(b"origin", event, delay))
    assert read is not None
    assert (read.origin, read.event, read.written_ms) == (b"origin", event, written)
    assert read.happened_ms == written - round(delay * 1000)


@pytest.mark.parametrize(
    ("entry_id", "fields"),
    [
        (b"1-0", {}),
        (b"1-0", {b"o": b"x", b"e": b"junk"}),
        (b"1-0", {b"o": b"x", b"e": b"B\x00\x01k", b"d": b"-5"}),
        (b"nonsense", {b"o": b"x", b"e": b"B\x00\x01k", b"d": b"0"}),
        (b"12", {b"o": b"x", b"e": b"B\x00\x01k"}),
    ],
)
def test_malformed_entries_are_ignored(entry_id: bytes, fields: dict[bytes, bytes]) -> None:
    assert read_entry(entry_id, fields) is None


def test_an_entry_without_origin_or_delay_is_someone_elses_and_immediate() -> None:
    read = read_entry(b"5000-1", {b"e": b"B\x00\x01k"})
    assert read is not None and (read.origin, read.event, read.happened_ms) == (
        b"",
        BlobGone("k"),
        5000,
    )


@pytest.mark.parametrize(
    ("entry_id", "ms"), [(b"1700000000000-3", 1700000000000), (b"0-0", 0), (b"1-x", None)]
)
def test_stream_ids(entry_id: bytes, ms: int | None) -> None:
    assert stream_ms(entry_id) == ms


def test_history_starts_retention_back_and_never_before_zero() -> None:
    assert start_id(1_000_000, 300) == b"700000-0"
    assert start_id(1_000, 300) == b"0-0"


@pytest.mark.parametrize(
    ("last_read", "newest", "resumed"),
    [
        (b"1000-5", b"1000-5", b"1000-5"),  # the same stream: where it stopped
        (b"1000-5", b"2000-0", b"1000-5"),  # more written since: read it
        (b"1000-5", b"1000-3", b"1000-3"),  # a promoted replica never had 1000-4 and -5
        (b"9000-0", b"1000-0", b"1000-0"),  # a primary with a clock behind the old one's
        (b"1000-5", None, b"0-0"),  # a Redis that lost the stream: from its start
    ],
)
def test_a_reader_resumes_where_the_stream_it_reconnected_to_ends(
    last_read: bytes, newest: bytes | None, resumed: bytes
) -> None:
    assert resume_id(last_read, newest) == resumed


def test_backoff_doubles_to_a_cap_with_jitter() -> None:
    assert [backoff(n, 1.0) for n in range(3)] == [BACKOFF_FIRST, 2 * BACKOFF_FIRST, 0.4]
    assert backoff(0, 0.0) == BACKOFF_FIRST / 2
    assert backoff(100, 1.0) == BACKOFF_CAP
    assert all(0 < backoff(n, j / 10) <= BACKOFF_CAP for n in range(40) for j in range(11))
    assert backoff(100, 1.0, SENTINEL_BACKOFF_CAP) == SENTINEL_BACKOFF_CAP < BACKOFF_CAP


@pytest.mark.parametrize(
    ("value", "addresses"),
    [
        (["127.0.0.1:26379"], (("127.0.0.1", 26379),)),
        ("sentinel-0.redis", (("sentinel-0.redis", 26379),)),
        (["a:1", "b:2", "[::1]:3", "[2001:db8::5]"],
         (("a", 1), ("b", 2), ("::1", 3), ("2001:db8::5", 26379))),
    ],
)  # fmt: skip
def test_sentinel_addresses(value: object, addresses: tuple[tuple[str, int], ...]) -> None:
    assert parse_sentinel_addresses(value) == addresses


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "empty list"),
        (["a:1", "a:1"], "listed twice"),
        (["a:0"], "out of range"),
        (["a:70000"], "out of range"),
        (["::1"], "expected HOST"),
        (["[::g]:1"], "IPv6"),
        (["a b"], "expected HOST"),
        ([26379], "expected HOST"),
        (["redis://a:1"], "expected HOST"),
        (["a:"], "expected HOST"),
    ],
)
def test_bad_sentinel_addresses(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_sentinel_addresses(value)


def test_with_sentinels_the_options_say_what_a_url_would_and_sentinels_get_their_own() -> None:
    settings = StateSettings(
        "redis", None, username="rp", sentinels=(("s", 1),), service="main", database=3,
        sentinel_tls=True, sentinel_username="watcher", ca_file=Path("ca.pem"),
    )  # fmt: skip
    primary = client_options(settings, "redis-pw", 0.5)
    assert (primary["ssl"], primary["db"], primary["password"], primary["username"]) == (
        True, 3, "redis-pw", "rp",
    )  # fmt: skip
    watchers = sentinel_options(settings, "sentinel-pw")
    assert (watchers["password"], watchers["username"], watchers["ssl"]) == (
        "sentinel-pw", "watcher", True,
    )  # fmt: skip
    for options in (primary, watchers):
        assert options["ssl_cert_reqs"] == "required" and options["ssl_ca_certs"] == "ca.pem"
    plain = StateSettings("redis", None, sentinels=(("s", 1),), service="main")
    assert "ssl_cert_reqs" not in client_options(plain, None, 0.5)
    assert "ssl" not in sentinel_options(plain, None) and plain.tls is False
    assert plain.where == "sentinel service main via s:1"
    assert StateSettings("redis", "rediss://u:pw@h/2").where == "rediss://h:6379/2"


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379/0", "rediss://redis.example.org", "redis://:pw@h:1/15", "redis://h"],
)
def test_redis_urls(url: str) -> None:
    assert parse_redis_url(url) == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h:6379", "expected redis://"),
        ("redis://", "expected redis://"),
        ("redis://h/zero", "the database is a number"),
        ("redis://h/0?ssl_cert_reqs=none", "options go in the state: section"),
        ("redis://h:0", "port 0"),
        ("redis://h:99999", "out of range"),
    ],
)
def test_bad_redis_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_redis_url(url)


def test_client_options_never_retry_by_themselves_and_verify_tls() -> None:
    plain = client_options(StateSettings("redis", "redis://h"), None, 0.5)
    assert plain == {
        "socket_timeout": 0.5,
        "socket_connect_timeout": 1.0,
        "health_check_interval": 0,
    }
    settings = StateSettings(
        "redis", "rediss://h", username="user", ca_file=Path("ca.pem"),
        cert_file=Path("c.crt"), key_file=Path("c.key"),
    )  # fmt: skip
    tls = client_options(settings, "pw", 0.5)
    assert tls["ssl_cert_reqs"] == "required" and tls["ssl_check_hostname"] is True
    assert (tls["ssl_ca_certs"], tls["ssl_certfile"], tls["ssl_keyfile"]) == (
        "ca.pem",
        "c.crt",
        "c.key",
    )
    assert (tls["password"], tls["username"]) == ("pw", "user")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "regproxy.yaml"
    path.write_text(text)
    return path


def test_the_state_section(tmp_path: Path) -> None:
    config = load(
        write(
            tmp_path,
            "state:\n  backend: redis\n  url: rediss://redis:6380/2\n  key_prefix: 'a:b:'\n"
            "  username: rp\n  password_file: pw\n  ca_file: ca.pem\n  cert_file: c.crt\n"
            "  key_file: c.key\n  timeout: 0.25\n  connect_timeout: 2\n"
            "auth_backends: [redis, htpasswd]\n",
        )
    )
    assert config.state == StateSettings(
        "redis",
        "rediss://redis:6380/2",
        "a:b:",
        "rp",
        None,
        tmp_path / "pw",
        tmp_path / "ca.pem",
        tmp_path / "c.crt",
        tmp_path / "c.key",
        0.25,
        2.0,
    )
    assert config.auth_backends == ("redis", "htpasswd")
    assert load(None).state == StateSettings()  # local, as before


def test_the_state_section_with_sentinels(tmp_path: Path) -> None:
    config = load(
        write(
            tmp_path,
            "state:\n  backend: redis\n  password_file: pw\n  ca_file: ca.pem\n"
            "  sentinel:\n    addresses: [s0:26379, s1, '[::1]:26380']\n"
            "    service: regproxy\n    database: 2\n    tls: true\n"
            "    username: watcher\n    password_file: sentinel-pw\n",
        )
    )
    assert config.state == StateSettings(
        "redis", None, password_file=tmp_path / "pw", ca_file=tmp_path / "ca.pem",
        sentinels=(("s0", 26379), ("s1", 26379), ("::1", 26380)), service="regproxy",
        database=2, sentinel_tls=True, sentinel_username="watcher",
        sentinel_password_file=tmp_path / "sentinel-pw",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("state:\n  backend: redis\n", "backend redis needs a url"),
        ("state:\n  url: redis://h\n", "these keys need backend: redis"),
        ("auth_backends: [redis]\n", "auth_backends names redis: it needs state:"),
        (
            "state:\n  backend: redis\n  url: redis://h\n  password: a\n  password_file: b\n",
            "password and password_file exclude each other",
        ),
        (
            "state:\n  backend: redis\n  url: redis://h\n  ca_file: ca.pem\n",
            "4: state: ca_file: only with TLS",
        ),
        (
            "state:\n  backend: redis\n  url: rediss://h\n  cert_file: c.crt\n",
            "cert_file and key_file go together",
        ),
        ("state:\n  backend: memcached\n", "expected one of local, redis"),
        ("state:\n  backend: redis\n  url: redis://h\n  key_prefix: a b\n", "without spaces"),
        ("state:\n  backend: redis\n  url: redis://h\n  timeout: 0\n", "positive number"),
        ("state:\n  backend: redis\n  url: redis://h\n  tls: true\n", "unknown key 'state.tls'"),
        (f"{SENTINEL}  url: redis://h\n", "6: state: url and sentinel exclude each other"),
        (
            "state:\n  backend: redis\n  sentinel:\n    addresses: [s]\n",
            "4: state.sentinel: needs addresses and service",
        ),
        (
            "state:\n  backend: redis\n  sentinel:\n    service: s\n",
            "4: state.sentinel: needs addresses and service",
        ),
        ("state:\n  sentinel:\n    service: s\n", "3: state: these keys need backend: redis"),
        (f"{SENTINEL}    tls: 'yes'\n", "6: state.sentinel.tls: expected true or false"),
        (f"{SENTINEL}    database: -1\n", "6: state.sentinel.database: expected a database"),
        (f"{SENTINEL}    service: a b\n", "6: duplicate key 'state.sentinel.service'"),
        (
            f"{SENTINEL}    password: a\n    password_file: b\n",
            "7: state.sentinel: password and password_file exclude each other",
        ),
        (f"{SENTINEL}  ca_file: ca.pem\n", "6: state: ca_file: only with TLS"),
        ("state:\n  backend: redis\n  sentinel.service: s\n", "unknown key 'state.sentinel.s"),
        (f"{SENTINEL}    port: 1\n", "6: unknown key 'state.sentinel.port'"),
    ],
)
def test_state_problems(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(write(tmp_path, text))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, None),
        ({b"password": BCRYPT.encode()}, UserRecord(identify(BCRYPT))),
        (
            {
                b"password": APR1.encode(),
                b"groups": b"ci, pusher  admin",
                b"upstream": b"http://r:5000/",
            },
            UserRecord(identify(APR1), frozenset({"ci", "pusher", "admin"}), "http://r:5000"),
        ),
        (
            {b"password": b" " + BCRYPT.encode() + b"\n", b"groups": b""},
            UserRecord(identify(BCRYPT)),
        ),
    ],
)
def test_user_records(fields: dict[bytes, bytes], expected: UserRecord | None) -> None:
    assert parse_record(fields) == expected


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({b"groups": b"ci"}, "no password"),
        ({b"password": b"secret"}, "not a hash htpasswd accepts"),
        ({b"password": BCRYPT.encode(), b"groups": b"a:b"}, "may not contain ':'"),
        ({b"password": BCRYPT.encode(), b"upstream": b"ftp://x"}, "upstream: expected http"),
        ({b"password": BCRYPT.encode(), b"upstream": b"http://u@x"}, "upstream: upstream must"),
        ({b"password": b"\xff"}, "not UTF-8"),
    ],
)
def test_unusable_records_refuse_their_user(fields: dict[bytes, bytes], problem: str) -> None:
    record = parse_record(fields)
    assert record is not None and record.password is None
    assert record.problem is not None and problem in record.problem


@pytest.mark.parametrize(
    ("args", "fields", "gone"),
    [
        (("h", None, None), {"password": "h"}, []),
        ((None, "ci,pusher", "https://r"), {"groups": "ci pusher", "upstream": "https://r"}, []),
        ((None, "", ""), {}, ["groups", "upstream"]),
    ],
)
def test_passwd_fields(
    args: tuple[str | None, str | None, str | None], fields: dict[str, str], gone: list[str]
) -> None:
    assert changes(*args) == (fields, gone)


@pytest.mark.parametrize(("groups", "upstream"), [("a:b", None), (None, "redis://x")])
def test_passwd_refuses_bad_fields(groups: str | None, upstream: str | None) -> None:
    with pytest.raises(ValueError):
        changes(None, groups, upstream)


def test_every_event_kind_round_trips_through_an_entry() -> None:
    for event in (LoginFailed("u", "a"), LoginSucceeded("u", "a"), BlobGone("k")):
        read = read_entry(b"1-0", entry(b"o", event, 0))
        assert read is not None and read.event == event
