"""The Redis key layout (`Keys`), and the pure parts of sharing state through Redis."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..core.values import port
from .events import Event, decode, encode
from .store import StateSettings

KNOWN_GOOD_KEPT = 50_000  # pairs kept in Redis (about 60 bytes each), as many as a throttle
RATE_KEPT = 60  # seconds a rate limit's window key outlives its window (clocks a bit apart)
READ_BATCH = 1000  # stream entries per XREAD
BLOCK_MS = 1000  # an idle XREAD waits this long for new entries, then asks again
BACKOFF_FIRST, BACKOFF_CAP = 0.1, 5.0  # seconds between reconnection attempts
# Count a login attempt as under way (KEYS[1]: the attempts of one (user, address); ARGV: the
# attempt, how long it may stay at most in ms): drop those past their time, add it (once,
# however often), return how many are under way. Redis's clock, so replicas' need not agree.
RESERVE = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('ZCARD', KEYS[1])
"""
# With Sentinel an attempt first asks a sentinel where the primary is (cheap), and a failover
# is over in seconds: try at least this often, so a replica follows it soon after.
SENTINEL_BACKOFF_CAP = 1.0
SENTINEL_PORT = 26379


# Every key starts with `state.key_prefix`, so installations can share a database; keys are
# bytes (a user name is whatever a Basic header carried).
# - `events`, a stream: every event a replica publishes, fields `o` (origin replica), `e` (the
#   event, encoded), `d` (ms it waited while Redis was away); trimmed to the throttle's memory;
# - `known-good`, a sorted set: (user, address) pairs that logged in, as encoded
#   LoginSucceeded, scored by when (ms); the newest KNOWN_GOOD_KEPT are kept;
# - `lock:NAME`, a string: a named lock, the holder's random token, expiring after ttl;
# - `attempts:HASH`, a sorted set: the login attempts under way for one (user, address),
#   member a keyed hash of the attempt, scored by when it lets go at the latest (ms);
# - `rate:HASH`, an integer: a rate limit's count in one window (a hash of the count's key
#   and the window's end), INCRBY by each worker's sync, expiring RATE_KEPT after its window;
# - `user:NAME`, a hash other tools may write: `password` (any htpasswd hash), `groups`
#   (separated by spaces or commas), `upstream` (optional: the user's own registry);
# - `users:version`, an integer: INCR it after changing any `user:` key, and every replica
#   reads users again within a second.
# Stream ids are Redis's clock (ms); readers measure ages by it too (`TIME` on connecting),
# so replicas' clocks never need to agree.
@dataclass(frozen=True)
class Keys:
    """The key names under one prefix."""

    prefix: str = "regproxy:"

    def _key(self, name: str) -> bytes:
        return (self.prefix + name).encode("utf-8", "surrogateescape")

    @property
    def events(self) -> bytes:
        return self._key("events")

    @property
    def known_good(self) -> bytes:
        return self._key("known-good")

    @property
    def users_version(self) -> bytes:
        return self._key("users:version")

    def lock(self, name: str) -> bytes:
        return self._key("lock:" + name)

    def attempts(self, key: str) -> bytes:
        digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16)
        return self._key("attempts:" + digest.hexdigest())

    def rate(self, key: str, expires: int) -> bytes:
        text = f"{key}\n{expires}".encode("utf-8", "surrogateescape")
        return self._key("rate:" + hashlib.blake2b(text, digest_size=16).hexdigest())

    def user(self, name: str) -> bytes:
        return self._key("user:" + name)

    def shared(self, name: str) -> bytes:
        return self._key("shared:" + name)

    def shared_version(self, name: str) -> bytes:
        return self._key(f"shared:{name}:version")


def entry(origin: bytes, event: Event, delay: float) -> dict[bytes, bytes]:
    """The stream fields of one published event; `delay`: seconds since it happened."""
    return {b"o": origin, b"e": encode(event), b"d": str(max(0, round(delay * 1000))).encode()}


@dataclass(frozen=True)
class Entry:
    """A stream entry read back: who published it, what, when it was written and when it
    happened (Redis's clock, ms)."""

    origin: bytes
    event: Event
    written_ms: int
    happened_ms: int


def read_entry(entry_id: bytes, fields: Mapping[bytes, bytes]) -> Entry | None:
    """The entry, or None for anything malformed (another tool's junk is ignored)."""
    written = stream_ms(entry_id)
    event = decode(fields.get(b"e", b""))
    delay = fields.get(b"d", b"0")
    if written is None or event is None or not delay.isdigit():
        return None
    return Entry(fields.get(b"o", b""), event, written, written - int(delay))


def after(entry_id: bytes, last_id: bytes) -> bool:
    """Whether stream id `entry_id` comes after `last_id` (a malformed id never does)."""
    ids = [tuple(int(n) for n in i.split(b"-")) for i in (entry_id, last_id) if _id(i)]
    return len(ids) == 2 and ids[0] > ids[1]


def _id(value: bytes) -> bool:
    ms, dash, seq = value.partition(b"-")
    return ms.isdigit() and bool(dash) and seq.isdigit()


def stream_ms(entry_id: bytes) -> int | None:
    """The milliseconds part of a stream id (`1700000000000-3`)."""
    ms, dash, seq = entry_id.partition(b"-")
    return int(ms) if ms.isdigit() and dash and seq.isdigit() else None


def resume_id(last_read: bytes, newest: bytes | None) -> bytes:
    """Where a reader goes on after reconnecting: where it stopped, or the stream's end when
    the stream now ends before that."""
    # A promoted replica may lack the last entries read from the old primary, or Redis lost
    # its data: going on from the old position would skip what is written next.
    if newest is None:
        return b"0-0"
    return newest if _order(newest) < _order(last_read) else last_read


def _order(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms or 0), int(seq or 0)


def start_id(now_ms: int, retention: float) -> bytes:
    """The first id of the history a starting process replays: `retention` seconds back."""
    return f"{max(0, now_ms - round(retention * 1000))}-0".encode()


def backoff(attempt: int, jitter: float, cap: float = BACKOFF_CAP) -> float:
    """Seconds before reconnection attempt `attempt` (0, 1, ...): doubling from BACKOFF_FIRST
    up to `cap`, times 0.5-1.0 by `jitter` (0-1) so replicas do not retry in step."""
    doubled = BACKOFF_FIRST * 2.0 ** min(attempt, 16)
    return min(cap, doubled) * (0.5 + jitter / 2)


def parse_redis_url(value: object) -> str:
    """`redis://` or `rediss://` HOST[:PORT][/DB], with optional user and password."""
    text = str(value)
    parts = urlsplit(text)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(f"expected redis://HOST[:PORT][/DB] or rediss://..., got {text!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"options go in the state: section, not the URL, got {text!r}")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise ValueError(f"the database is a number (/0), got {parts.path!r}")
    if parts.port == 0:  # .port raises ValueError itself for other bad ports
        raise ValueError("port 0 is not a port")
    return text


def parse_sentinel_addresses(value: object) -> tuple[tuple[str, int], ...]:
    """`[HOST[:PORT], ...]` (port 26379 unless given; `[IPv6]:PORT`), at least one, distinct."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("expected a list of HOST:PORT, got an empty list")
    addresses = tuple(_sentinel_address(item) for item in items)
    if len(set(addresses)) != len(addresses):
        raise ValueError(f"an address is listed twice in {value!r}")
    return addresses


_ADDRESS = re.compile(r"\[([0-9a-fA-F:.]+)\](?::(\d+))?|([A-Za-z0-9][A-Za-z0-9.-]*)(?::(\d+))?")


def _sentinel_address(item: object) -> tuple[str, int]:
    match = _ADDRESS.fullmatch(item) if isinstance(item, str) else None
    if match is None:
        raise ValueError(f"expected HOST[:PORT] or [IPv6][:PORT], got {item!r}")
    if match.group(1):
        ipaddress.IPv6Address(match.group(1))  # ValueError names the address
    number = port(int(match.group(2) or match.group(4) or SENTINEL_PORT))
    return match.group(1) or match.group(3), number


def parse_service(value: object) -> str:
    """The name the sentinels monitor the primary under (`sentinel monitor NAME ...`)."""
    if not isinstance(value, str) or not value or not value.isprintable() or " " in value:
        raise ValueError(f"expected a name without spaces, got {value!r}")
    return value


def client_options(settings: StateSettings, password: str | None, timeout: float) -> dict[str, Any]:
    """Keyword arguments for a redis-py client of Redis: bounded timeouts, no retries, TLS
    verified whenever it is on."""
    # No retries of its own: the store reconnects with its own backoff, and a request never
    # waits through retries.
    options: dict[str, Any] = {"health_check_interval": 0}
    options.update(_socket(settings, timeout, password, settings.username))
    if settings.sentinels:  # what a URL would say
        options.update(ssl=settings.tls, db=settings.database)
    return options


def sentinel_options(settings: StateSettings, password: str | None) -> dict[str, Any]:
    """Keyword arguments for the clients of the sentinels (their own credentials; TLS as
    Redis's)."""
    options = _socket(settings, settings.timeout, password, settings.sentinel_username)
    if settings.tls:
        options["ssl"] = True
    return options


def _socket(
    settings: StateSettings, timeout: float, password: str | None, username: str | None
) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": settings.connect_timeout,
    }
    if password is not None:
        options["password"] = password
    if username is not None:
        options["username"] = username
    if settings.tls:
        options["ssl_cert_reqs"] = "required"
        options["ssl_check_hostname"] = True
        for name, path in (
            ("ssl_ca_certs", settings.ca_file),
            ("ssl_certfile", settings.cert_file),
            ("ssl_keyfile", settings.key_file),
        ):
            if path is not None:
                options[name] = str(path)
    return options
