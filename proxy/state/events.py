"""What one process tells the others to keep their local copies in step: login outcomes, cache
invalidations and rate counts, as small byte strings (`encode`, `decode`)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class LoginFailed:
    """A wrong password for `user` from `address`."""

    user: str
    address: str


@dataclass(frozen=True)
class LoginSucceeded:
    """`user` logged in from `address` for the first time (in a while)."""

    user: str
    address: str


@dataclass(frozen=True)
class BlobGone:
    """A blob was deleted through the proxy: drop its existence answer (key: upstream+path)."""

    key: str


@dataclass(frozen=True)
class CredentialVerified:
    """A worker verified a password (htpasswd); never leaves the machine."""

    key: str  # the user and stored hash
    tag: str  # the keyed hash of the password (hex)
    seconds: str  # how long it holds


@dataclass(frozen=True)
class Counted:
    """A worker counted `amount` (an integer; negative: given back) under a rate limit's `key`
    in the window ending at `expires` (epoch seconds). Among the workers of one machine:
    replicas share totals through the store instead."""

    key: str
    expires: str
    amount: str


@dataclass(frozen=True)
class RepositoryPushed:
    """A manifest was pushed through the proxy: a catalog listing of `upstream` without
    `repository` is out of date."""

    upstream: str
    repository: str


@dataclass(frozen=True)
class CredentialChecking:
    """A worker started (`ended` "0") or ended ("1", whatever the answer) checking a password:
    `key` and `tag` as in CredentialVerified. Among the workers of one machine only."""

    key: str
    tag: str
    ended: str


Event = (
    LoginFailed
    | LoginSucceeded
    | BlobGone
    | CredentialVerified
    | CredentialChecking
    | Counted
    | RepositoryPushed
)
_KINDS: dict[bytes, type[Event]] = {
    b"F": LoginFailed,
    b"S": LoginSucceeded,
    b"B": BlobGone,
    b"V": CredentialVerified,
    b"K": CredentialChecking,
    b"C": Counted,
    b"R": RepositoryPushed,
}
_CODES = {kind: code for code, kind in _KINDS.items()}
# Each kind's fields in order (not `astuple`, which deep-copies the values: most of the cost).
_NAMES = {kind: tuple(f.name for f in fields(kind)) for kind in _KINDS.values()}
_LENGTH = struct.Struct("!H")
MAX_EVENT = 16 * 1024  # a user name from a Basic header is at most 4 KiB


def encode(event: Event) -> bytes:
    kind = type(event)
    parts = [_CODES[kind]]
    for value in [getattr(event, name) for name in _NAMES[kind]]:
        data = str(value).encode("utf-8", "surrogateescape")[: MAX_EVENT // 2]
        parts += [_LENGTH.pack(len(data)), data]
    return b"".join(parts)


def decode(data: bytes) -> Event | None:
    """The event, or None for anything malformed."""
    kind = _KINDS.get(data[:1])
    if kind is None:
        return None
    values: list[str] = []
    offset = 1
    for _ in _NAMES[kind]:
        if offset + _LENGTH.size > len(data):
            return None
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + length > len(data):
            return None
        values.append(data[offset : offset + length].decode("utf-8", "surrogateescape"))
        offset += length
    return kind(*values) if offset == len(data) else None
