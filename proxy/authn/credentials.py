"""Apache htpasswd and group files: pure parsers (a bad line reported and skipped, as Apache
does) and hash verification."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import bcrypt

from ..core.problems import Problem
from ..http.routes import valid_component

T = TypeVar("T")

_USER_RE = re.compile(r"[^\s:#][^\s:]*")
SLASH_PROBLEM = "'/' is not allowed (${user} or ${group} in the ACL would cross a namespace)"
BCRYPT_MAX_BYTES = 72  # bcrypt ignores the rest; Apache and the bcrypt C library agree
_CRYPT64 = "[./0-9A-Za-z]"
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("bcrypt", re.compile(rf"\$2[abxy]\$(?:0[4-9]|[12]\d|3[01])\${_CRYPT64}{{53}}")),
    ("apr1", re.compile(rf"\$apr1\$[^$:]{{0,8}}\${_CRYPT64}{{22}}")),
    ("sha256-crypt", re.compile(rf"\$5\$(rounds=\d+\$)?[^$:]{{0,16}}\${_CRYPT64}{{43}}")),
    ("sha512-crypt", re.compile(rf"\$6\$(rounds=\d+\$)?[^$:]{{0,16}}\${_CRYPT64}{{86}}")),
    ("sha1", re.compile(r"\{SHA\}[A-Za-z0-9+/]{27}=")),
    ("crypt", re.compile(rf"{_CRYPT64}{{13}}")),
)
# The common line, `user:bcrypt-hash` with nothing around it, read in one match: a file of
# 100,000 users is read at start and at each reload. Any other line takes the full path.
_BCRYPT_ENTRY = rf"([^\s:#/][^\s:/]*):({_PATTERNS[0][1].pattern})\r?"
_BCRYPT_LINE = re.compile(_BCRYPT_ENTRY).fullmatch
# Every line of a file such lines alone make up, a piece of it per call: what most files are.
_BCRYPT_LINES = re.compile(rf"^{_BCRYPT_ENTRY}$", re.MULTILINE).findall
# A reload parses the files in a thread, and a call into C (a regex over the text, a split)
# holds the GIL, so the event loop, until it returns: 100,000 users are 7 MB, about 150 ms in
# one findall. Whole texts are taken in pieces of about this many characters instead.
PIECE = 1 << 16


def _pieces(text: str, size: int = PIECE) -> Iterator[str]:
    """`text` in consecutive pieces of at least `size` characters (but the last), each ending
    where a line does."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + size) + 1 or len(text)
        yield text[start:end]
        start = end


def _split(text: str, size: int = PIECE) -> list[str]:
    """`text.split("\n")`, a piece at a time."""
    lines: list[str] = []
    for piece in _pieces(text, size):
        lines += piece.split("\n")
        lines.pop()  # the piece's end: "" after its last newline, or its last line (put back)
    lines.append(text[text.rfind("\n") + 1 :])
    return lines


def _lines(text: str) -> list[str]:
    """Lines as editors and Apache count them: on newlines only, CR of CRLF dropped."""
    lines = _split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _entries(text: str) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) of every line that is not blank or a `#` comment."""
    for number, raw in enumerate(_lines(text), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


def _check_bcrypt(password: bytes, stored: str) -> bool:
    # Apache writes $2y$; the bcrypt library wants $2b$ (same algorithm, different label).
    normalized = "$2b$" + stored[4:] if stored[:4] in ("$2y$", "$2x$", "$2a$") else stored
    return bcrypt.checkpw(password[:BCRYPT_MAX_BYTES], normalized.encode("ascii"))


def _sha_crypt_rounds(stored: str) -> int:
    match = re.match(r"\$[56]\$rounds=(\d+)\$", stored)
    return int(match.group(1)) if match else 5000


# Schemes other than bcrypt come from passlib (libpass), imported only when a file uses one:
# it costs each process several MiB, and most htpasswd files are bcrypt only.
_PASSLIB = {
    "apr1": "apr_md5_crypt",
    "sha256-crypt": "sha256_crypt",
    "sha512-crypt": "sha512_crypt",
    "sha1": "ldap_sha1",
    "crypt": "des_crypt",
}


def _passlib(scheme: str) -> Any:
    import passlib.hash

    return getattr(passlib.hash, _PASSLIB[scheme])


def _check(scheme: str, password: bytes, stored: str) -> bool:
    if scheme == "bcrypt":
        return _check_bcrypt(password, stored)
    return bool(_passlib(scheme).verify(password, stored))


def _hash_like(scheme: str, password: str, sample: str) -> str:
    """A hash of `password` with the same scheme and cost as `sample` (not bcrypt)."""
    handler = _passlib(scheme)
    if scheme in ("sha256-crypt", "sha512-crypt"):
        handler = handler.using(rounds=_sha_crypt_rounds(sample))
    return str(handler.hash(password[:8] if scheme == "crypt" else password))


@dataclass(frozen=True)
class PasswordHash:
    """A stored hash whose scheme was recognised when the file was parsed."""

    scheme: str
    value: str = field(repr=False)

    @property
    def cost(self) -> int:
        """bcrypt's log2 rounds or sha-crypt's rounds; 0 for schemes without a cost."""
        if self.scheme == "bcrypt":
            return int(self.value[4:6])
        if self.scheme in ("sha256-crypt", "sha512-crypt"):
            return _sha_crypt_rounds(self.value)
        return 0

    def verify(self, password: bytes) -> bool:
        """Whether `password` matches; slow for bcrypt and sha-crypt (run off the event loop)."""
        try:
            return _check(self.scheme, password, self.value)
        except (ValueError, TypeError):  # a password the scheme cannot take (NUL): wrong
            return False


def identify(stored: str) -> PasswordHash | None:
    """Recognise every format Apache's `htpasswd` writes; None for anything else."""
    for name, pattern in _PATTERNS:
        if pattern.fullmatch(stored):
            return PasswordHash(name, stored)
    return None


DEFAULT_DUMMY_SAMPLE = PasswordHash("bcrypt", "$2y$05$" + "." * 53)


# The standard base64 alphabet, in order, and bcrypt's.
_TO_BCRYPT64 = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
    b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
)


def dummy_like(sample: PasswordHash | None) -> PasswordHash:
    """A hash no password is known to match, with the same scheme and cost as `sample`."""
    # Unknown users are checked against it, so the response time does not tell which user
    # names exist.
    sample = sample or DEFAULT_DUMMY_SAMPLE
    if sample.scheme == "bcrypt":  # the pattern guarantees a two-digit cost of 04-31
        return PasswordHash("bcrypt", _unmatched_bcrypt(int(sample.value[4:6])))
    return PasswordHash(
        sample.scheme, _hash_like(sample.scheme, secrets.token_urlsafe(16), sample.value)
    )


def _unmatched_bcrypt(cost: int) -> str:
    """A bcrypt hash of `cost` with a random salt and a random digest."""
    # A check against it hashes the password with that salt and cost, as against any hash,
    # and finds another digest: hashing a random password instead (the same digest for
    # nobody) cost one whole bcrypt at every start. Both parts are valid bcrypt base64 (23
    # random bytes are 31 characters, their last bits zero): a salt that is not is refused
    # at once, which would time unknown users apart.
    digest = base64.b64encode(secrets.token_bytes(23))[:31].translate(_TO_BCRYPT64)
    return (bcrypt.gensalt(cost, prefix=b"2b") + digest).decode()


@dataclass(frozen=True)
class Htpasswd:
    """Parsed htpasswd file: users with recognised hashes, and the lines that were not."""

    users: Mapping[str, PasswordHash]
    problems: tuple[Problem, ...] = ()

    def typical_hash(self) -> PasswordHash | None:
        """The most common scheme/cost in the file, to build the unknown-user dummy from."""
        if isinstance(self.users, BcryptUsers):
            return self.users.typical()
        return _most_common(lambda: ((_kind(h), h) for h in self.users.values()))


class BcryptUsers(Mapping[str, PasswordHash]):
    """The users of a file of bcrypt lines only, their hashes kept as the file's text: each
    `PasswordHash` is made when a login looks it up, not one per user at every load."""

    __slots__ = ("_hashes",)

    def __init__(self, hashes: dict[str, str]) -> None:
        self._hashes = hashes

    def __getitem__(self, user: str) -> PasswordHash:
        return PasswordHash("bcrypt", self._hashes[user])

    def __contains__(self, user: object) -> bool:
        return user in self._hashes

    def __iter__(self) -> Iterator[str]:
        return iter(self._hashes)

    def __len__(self) -> int:
        return len(self._hashes)

    def typical(self) -> PasswordHash | None:
        """`Htpasswd.typical_hash`, from the text: the first hash of the most common cost."""
        stored = _most_common(lambda: ((h[4:6], h) for h in self._hashes.values()))
        return PasswordHash("bcrypt", stored) if stored is not None else None


def _most_common(kinds: Callable[[], Iterable[tuple[object, T]]]) -> T | None:
    """The first value of the kind most values have (ties: the kind seen first), or None;
    `kinds()` gives each value with its kind, in order, once to count and once to choose."""
    counts = Counter(kind for kind, _ in kinds())
    if not counts:
        return None
    typical = max(counts, key=lambda k: counts[k])
    return next(value for kind, value in kinds() if kind == typical)


def _kind(stored: PasswordHash) -> tuple[str, object]:
    """A hash's scheme and cost (bcrypt's as its two digits: the same, and quicker)."""
    return stored.scheme, stored.value[4:6] if stored.scheme == "bcrypt" else stored.cost


def parse_htpasswd(text: str, source: str) -> Htpasswd:
    """Parse `user:hash` lines; a user listed twice keeps the first entry, as in Apache."""
    # A line that cannot be parsed disables its user too: a later line for the same user does
    # not take over, since Apache would stop at the first.
    if whole := _bcrypt_only(text):
        return whole
    users: dict[str, PasswordHash] = {}
    refused: set[str] = set()  # users whose first line was not usable
    problems: list[Problem] = []
    for number, raw in enumerate(_split(text), start=1):
        fast = _BCRYPT_LINE(raw)
        if fast is not None and fast[1] not in users and fast[1] not in refused:
            users[fast[1]] = PasswordHash("bcrypt", fast[2])
            continue
        line = raw.removesuffix("\r").strip()
        if not line or line.startswith("#"):
            continue
        user, sep, stored = line.partition(":")
        if not sep or not _USER_RE.fullmatch(user):
            problems.append(Problem(source, number, "malformed line, expected user:hash"))
            continue
        parsed = identify(stored.strip())
        if "/" in user:
            problems.append(Problem(source, number, f"user {user!r}: {SLASH_PROBLEM}"))
        elif user in users or user in refused:
            problems.append(Problem(source, number, f"user {user!r} repeated; first entry wins"))
        elif parsed is None:
            problems.append(
                Problem(source, number, f"user {user!r}: unrecognised or plaintext password hash")
            )
        else:
            users[user] = parsed
            continue
        refused.add(user)
    return Htpasswd(users, tuple(problems))


def _bcrypt_only(text: str, size: int = PIECE) -> Htpasswd | None:
    """`parse_htpasswd` of a file of bcrypt lines only, each user once; None for any other."""
    hashes: dict[str, str] = {}
    lines = 0
    for piece in _pieces(text, size):
        pairs = _BCRYPT_LINES(piece)
        count = piece.count("\n") + (not piece.endswith("\n"))
        if len(pairs) != count:  # a blank, comment or other line: the full path
            return None
        hashes.update(pairs)
        lines += count
    return Htpasswd(BcryptUsers(hashes)) if hashes and len(hashes) == lines else None


def parse_groups(text: str, source: str) -> tuple[dict[str, frozenset[str]], tuple[Problem, ...]]:
    """Parse Apache's group file: `group: user1 user2`, a group on one line or several (a
    group named with `/` is refused with its line, a member named with `/` left out)."""
    members: dict[str, set[str]] = {}
    problems: list[Problem] = []
    for number, line in _entries(text):
        group, sep, users = line.partition(":")
        group = group.strip()
        if not sep or not group or any(c.isspace() for c in group):
            problems.append(Problem(source, number, "malformed line, expected 'group: user ...'"))
            continue
        if "/" in group:
            problems.append(Problem(source, number, f"group {group!r}: {SLASH_PROBLEM}"))
            continue
        names = users.split()
        if "/" in users:  # rare: most lines need no look at each member
            for user in (u for u in names if "/" in u):
                problems.append(Problem(source, number, f"member {user!r}: {SLASH_PROBLEM}"))
            names = [u for u in names if "/" not in u]
        members.setdefault(group, set()).update(names)
    return {g: frozenset(u) for g, u in members.items()}, tuple(problems)


def placeholder_notes(text: str, source: str, kind: str) -> list[Problem]:
    """The users or groups (`kind`) whose names can never fill a `${user}` or `${group}`
    placeholder (not one repository path component); they still match rules by name."""
    notes = []
    for number, line in _entries(text):
        name = line.partition(":")[0].strip()
        if name and "/" not in name and not valid_component(name):
            notes.append(
                Problem(
                    source,
                    number,
                    f"note: {kind} {name!r} never matches ${{{kind}}} in the ACL"
                    " (not a single lowercase repository path component)",
                )
            )
    return notes


class MalformedCredentials(ValueError):
    """An Authorization header that is not well-formed Basic credentials."""


AUTHORIZATION_MAX = 4096


def parse_basic_auth(values: list[str]) -> tuple[str, str] | None:
    """The (user, password) of a Basic Authorization header; None for none, another scheme,
    or an empty user and password. MalformedCredentials for anything else unreadable."""
    # The scheme is compared ASCII case-insensitively, as Go's parseBasicAuth does, never with
    # Unicode folding; bytes that are not UTF-8 are kept as surrogate escapes.
    if not values:
        return None
    if len(values) > 1:
        raise MalformedCredentials("several Authorization headers")
    value = values[0].strip(" \t")
    if len(value) > AUTHORIZATION_MAX:
        raise MalformedCredentials("Authorization header too long")
    if not value.isascii():
        raise MalformedCredentials("Authorization header is not ASCII")
    scheme, _, encoded = value.partition(" ")
    if scheme.encode().lower() != b"basic":  # bytes: ASCII-only folding
        return None
    try:
        decoded = base64.b64decode(encoded.strip(" \t"), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedCredentials("Basic credentials are not valid base64") from None
    user, sep, password = decoded.decode("utf-8", "surrogateescape").partition(":")
    if not sep:
        raise MalformedCredentials("Basic credentials have no ':' between user and password")
    if not user and not password:
        return None  # what podman sends when it has no credentials: anonymous
    return user, password


_TOKEN68_RE = re.compile(r"[A-Za-z0-9._~+/-]+=*")


def bearer_token(values: list[str]) -> str | None:
    """The token of a single `Authorization: Bearer` header (RFC 6750), or None for another
    scheme or none; MalformedCredentials for a malformed token."""
    if len(values) != 1:
        return None
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    if not _TOKEN68_RE.fullmatch(token):
        raise MalformedCredentials("Bearer credentials are not a token")
    return token


def basic_header(user: str, password: str) -> str:
    """An Authorization header value (for credentials that arrived another way)."""
    raw = f"{user}:{password}".encode("utf-8", "surrogateescape")
    return "Basic " + base64.b64encode(raw).decode()


def hash_password(password: str, cost: int = 10) -> str:
    """A bcrypt hash labelled `$2y$`, exactly as Apache's `htpasswd -B` writes it."""
    if not 4 <= cost <= 17:
        raise ValueError("bcrypt cost must be between 4 and 17 (htpasswd -C)")
    value = bcrypt.hashpw(password.encode()[:BCRYPT_MAX_BYTES], bcrypt.gensalt(cost)).decode()
    return "$2y$" + value[4:]


def user_name_problem(user: str) -> str | None:
    """Why `user` may not be added to an htpasswd file, or None."""
    if not _USER_RE.fullmatch(user):
        return f"invalid user name {user!r}: no spaces, ':' or leading '#'"
    if "/" in user:
        return f"invalid user name {user!r}: {SLASH_PROBLEM}"
    return None


def edit_htpasswd(text: str, user: str, new_hash: str | None) -> tuple[str, bool]:
    """Set (or, with `new_hash` None, delete) `user`'s line: the new text, and whether the
    user was there before."""
    problem = user_name_problem(user)
    if problem is not None and (new_hash is not None or "/" not in user):
        raise ValueError(problem)  # a user with '/' may still be deleted
    lines, found = [], False
    for raw in _lines(text):
        if raw.partition(":")[0].strip() == user and not raw.lstrip().startswith("#"):
            if not found and new_hash is not None:
                lines.append(f"{user}:{new_hash}")
            found = True
            continue
        lines.append(raw)
    if not found and new_hash is not None:
        lines.append(f"{user}:{new_hash}")
    return ("\n".join(lines) + "\n" if lines else ""), found
