"""proxy.authn.credentials against Apache's real `htpasswd`: every format it writes is
recognised and verified as Apache verifies it (truncation, prefixes, non-UTF-8 passwords),
hashes regproxy writes are accepted by Apache, and dummy hashes match real files' scheme and
cost.
(The pure tables: tests/unit/test_credentials.py.)

`htpasswd` (apache2-utils) is required: without it these tests fail, they never skip.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from proxy.authn.credentials import (
    BCRYPT_MAX_BYTES,
    PasswordHash,
    dummy_like,
    hash_password,
    identify,
    parse_basic_auth,
    parse_htpasswd,
)

# --------------------------------------------------------------------------------------------
# Real htpasswd
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def htpasswd_bin() -> str:
    path = shutil.which("htpasswd")
    assert path is not None, (
        "Apache's htpasswd is required (apt-get install apache2-utils); "
        "these tests compare against it and must not be skipped"
    )
    return path


def apache_hash(binary: str, flags: list[str], password: bytes, user: str = "u") -> str:
    """The hash `htpasswd -n... user password` writes (password passed as raw bytes)."""
    done = subprocess.run(
        [binary, *flags, user, password], capture_output=True, check=True, timeout=60
    )
    line = done.stdout.decode("ascii").strip()
    name, sep, stored = line.partition(":")
    assert (name, sep) == (user, ":"), line
    return stored


def apache_verifies(binary: str, file: Path, user: str, password: bytes) -> bool:
    """`htpasswd -vb FILE USER PASSWORD`: exit 0 if correct, 3 if not."""
    done = subprocess.run(
        [binary, "-vb", str(file), user, password], capture_output=True, timeout=60
    )
    assert done.returncode in (0, 3), done
    return done.returncode == 0


# (id, htpasswd flags, scheme identify() must report, shape of the stored value)
APACHE_FORMATS = [
    ("default-apr1", ["-nb"], "apr1", r"\$apr1\$[^$]{1,8}\$[./0-9A-Za-z]{22}"),
    ("bcrypt", ["-nbB"], "bcrypt", r"\$2y\$05\$[./0-9A-Za-z]{53}"),
    ("bcrypt-C4", ["-nbB", "-C", "4"], "bcrypt", r"\$2y\$04\$[./0-9A-Za-z]{53}"),
    ("bcrypt-C10", ["-nbB", "-C", "10"], "bcrypt", r"\$2y\$10\$[./0-9A-Za-z]{53}"),
    ("md5-apr1", ["-nbm"], "apr1", r"\$apr1\$[^$]{1,8}\$[./0-9A-Za-z]{22}"),
    ("sha1", ["-nbs"], "sha1", r"\{SHA\}[A-Za-z0-9+/]{27}="),
    ("sha256-crypt", ["-nb2"], "sha256-crypt", r"\$5\$[^$]{1,16}\$[./0-9A-Za-z]{43}"),
    (
        "sha256-crypt-r10000",
        ["-nb2", "-r", "10000"],
        "sha256-crypt",
        r"\$5\$rounds=10000\$[^$]{1,16}\$[./0-9A-Za-z]{43}",
    ),
    ("sha512-crypt", ["-nb5"], "sha512-crypt", r"\$6\$[^$]{1,16}\$[./0-9A-Za-z]{86}"),
    (
        "sha512-crypt-r1000",
        ["-nb5", "-r", "1000"],
        "sha512-crypt",
        r"\$6\$rounds=1000\$[^$]{1,16}\$[./0-9A-Za-z]{86}",
    ),
    ("crypt", ["-nbd"], "crypt", r"[./0-9A-Za-z]{13}"),
]

PASSWORDS = [
    pytest.param(b"s3cret", id="ascii"),
    pytest.param(b"pass:with:colons", id="colons"),
    pytest.param(b":", id="only-colon"),
    pytest.param(b"with space and \ttab", id="spaces"),
    pytest.param("ünïcødé-密码-🔑".encode(), id="unicode"),
    pytest.param(b"\xff\xfe\x80not-utf8", id="non-utf8"),
    pytest.param(b"x" * 40 + b"Y" * 60, id="100-bytes"),
]


def truncated(scheme: str, password: bytes) -> bytes:
    """What the scheme really hashes: DES crypt keeps 8 bytes, bcrypt 72."""
    if scheme == "crypt":
        return password[:8]
    if scheme == "bcrypt":
        return password[:BCRYPT_MAX_BYTES]
    return password


@pytest.mark.parametrize(("flags", "scheme", "shape"), [f[1:] for f in APACHE_FORMATS],
                         ids=[f[0] for f in APACHE_FORMATS])  # fmt: skip
@pytest.mark.parametrize("password", PASSWORDS)
def test_identify_and_verify_every_apache_format(
    htpasswd_bin: str, flags: list[str], scheme: str, shape: str, password: bytes
) -> None:
    stored = apache_hash(htpasswd_bin, flags, password)
    assert re.fullmatch(shape, stored), stored
    parsed = identify(stored)
    assert parsed == PasswordHash(scheme, stored)
    assert parsed.verify(password) is True
    wrong = [b"wrong" + password, b"", password.swapcase(), b"s3cre"]
    kept = truncated(scheme, password)
    if kept == password:  # no truncation: one more or one fewer byte must fail too
        wrong += [password + b"x", password[:-1]]
    for guess in wrong:
        if truncated(scheme, guess) != kept:
            assert parsed.verify(guess) is False, guess


@pytest.mark.parametrize(("flags", "scheme", "shape"), [f[1:] for f in APACHE_FORMATS],
                         ids=[f[0] for f in APACHE_FORMATS])  # fmt: skip
@pytest.mark.parametrize(
    "guess",
    [
        pytest.param(b"\x00", id="nul"),
        pytest.param(b"\x00pw", id="nul-then-password"),
        pytest.param(b"p\x00w", id="nul-inside"),
    ],
)
def test_verify_refuses_nul_bytes_without_raising(
    htpasswd_bin: str, flags: list[str], scheme: str, shape: str, guess: bytes
) -> None:
    """Basic credentials may carry NUL bytes; verify() runs in the request path and must
    answer False (wrong password), never raise."""
    parsed = identify(apache_hash(htpasswd_bin, flags, b"pw"))
    assert parsed is not None and parsed.scheme == scheme
    assert parsed.verify(guess) is False


def test_crypt_truncates_to_8_bytes_like_apache(htpasswd_bin: str) -> None:
    stored = apache_hash(htpasswd_bin, ["-nbd"], b"longpassword")
    parsed = identify(stored)
    assert parsed is not None and parsed.scheme == "crypt"
    assert parsed.verify(b"longpass") is True
    assert parsed.verify(b"longpassANYTHING") is True
    assert parsed.verify(b"longpas") is False
    assert parsed.verify(b"Longpassword") is False


@pytest.mark.parametrize("cost", ["4", "10"])
def test_bcrypt_over_72_bytes_truncates_like_apache(htpasswd_bin: str, cost: str) -> None:
    password = bytes(range(0x41, 0x41 + 26)) * 4  # 104 bytes
    stored = apache_hash(htpasswd_bin, ["-nbB", "-C", cost], password)
    parsed = identify(stored)
    assert parsed is not None and parsed.scheme == "bcrypt"
    assert parsed.verify(password) is True
    assert parsed.verify(password[:72]) is True
    assert parsed.verify(password[:72] + b"anything else") is True
    assert parsed.verify(password[:71]) is False
    assert parsed.verify(password[:71] + b"!") is False


def test_bcrypt_multibyte_character_cut_at_72_bytes(htpasswd_bin: str) -> None:
    password = ("a" * 71 + "é" + "tail").encode()  # the 72-byte cut splits 'é'
    stored = apache_hash(htpasswd_bin, ["-nbB", "-C", "4"], password)
    parsed = identify(stored)
    assert parsed is not None
    assert parsed.verify(password) is True
    assert parsed.verify(password[:72]) is True
    assert parsed.verify(b"a" * 71) is False


@pytest.mark.parametrize("label", ["$2a$", "$2b$", "$2y$"])
def test_bcrypt_prefixes(htpasswd_bin: str, label: str) -> None:
    apache = apache_hash(htpasswd_bin, ["-nbB", "-C", "4"], b"pw")
    relabelled = label + apache[4:]
    parsed = identify(relabelled)
    assert parsed == PasswordHash("bcrypt", relabelled)
    assert parsed.verify(b"pw") is True
    assert parsed.verify(b"pW") is False


def test_plaintext_htpasswd_p_is_not_recognised(htpasswd_bin: str) -> None:
    stored = apache_hash(htpasswd_bin, ["-nbp"], b"plain-secret")
    assert stored == "plain-secret"
    assert identify(stored) is None


@pytest.fixture(scope="module")
def real_hashes(htpasswd_bin: str) -> dict[str, list[str]]:
    """Several independently salted hashes of b"pw" per format, from the real htpasswd."""
    formats = {
        "apr1": ["-nbm"],
        "sha1": ["-nbs"],
        "sha256": ["-nb2"],
        "sha512": ["-nb5"],
        "sha512-r1000": ["-nb5", "-r", "1000"],
        "sha256-r10000": ["-nb2", "-r", "10000"],
        "sha256-r20000": ["-nb2", "-r", "20000"],
        "crypt": ["-nbd"],
        "bcrypt4": ["-nbB", "-C", "4"],
        "bcrypt5": ["-nbB", "-C", "5"],
    }
    return {
        name: [apache_hash(htpasswd_bin, flags, b"pw") for _ in range(3)]
        for name, flags in formats.items()
    }


@pytest.mark.parametrize(
    ("majority", "minority", "scheme"),
    [
        ("bcrypt5", "bcrypt4", "bcrypt"),
        ("bcrypt4", "apr1", "bcrypt"),
        ("apr1", "bcrypt5", "apr1"),
        ("sha512", "bcrypt4", "sha512-crypt"),
        ("sha256", "bcrypt4", "sha256-crypt"),
        ("crypt", "bcrypt4", "crypt"),
        ("sha1", "bcrypt4", "sha1"),
    ],
)
def test_typical_hash_is_the_most_common_scheme_and_cost(
    real_hashes: dict[str, list[str]], majority: str, minority: str, scheme: str
) -> None:
    """Three users with one format (each with its own salt) outnumber two with another."""
    lines = [f"m{i}:{h}" for i, h in enumerate(real_hashes[majority])]
    lines += [f"n{i}:{h}" for i, h in enumerate(real_hashes[minority][:2])]
    for ordering in (lines, lines[::-1]):
        parsed = parse_htpasswd("\n".join(ordering), "f")
        assert not parsed.problems
        typical = parsed.typical_hash()
        assert typical is not None
        assert typical.scheme == scheme
        assert typical.value in real_hashes[majority]


def test_typical_hash_keeps_the_common_sha_crypt_rounds(
    real_hashes: dict[str, list[str]],
) -> None:
    lines = [f"m{i}:{h}" for i, h in enumerate(real_hashes["sha256-r20000"])]
    lines += [f"n{i}:{h}" for i, h in enumerate(real_hashes["sha256-r10000"][:2])]
    for ordering in (lines, lines[::-1]):
        typical = parse_htpasswd("\n".join(ordering), "f").typical_hash()
        assert typical is not None
        assert typical.value.startswith("$5$rounds=20000$")


def _sha_rounds(value: str) -> int:
    match = re.match(r"\$[56]\$rounds=(\d+)\$", value)
    return int(match.group(1)) if match else 5000


@pytest.mark.parametrize(
    "name",
    [
        "apr1",
        "sha1",
        "sha256",
        "sha512",
        "sha512-r1000",
        "sha256-r10000",
        "crypt",
        "bcrypt4",
        "bcrypt5",
    ],
)
def test_dummy_like_same_scheme_and_cost(real_hashes: dict[str, list[str]], name: str) -> None:
    sample = identify(real_hashes[name][0])
    assert sample is not None
    dummy = dummy_like(sample)
    assert dummy.scheme == sample.scheme
    assert identify(dummy.value) == dummy  # a well-formed hash of its scheme
    if sample.scheme == "bcrypt":
        assert dummy.value[3:7] == sample.value[3:7]  # cost preserved
    if sample.scheme.startswith("sha"):
        assert _sha_rounds(dummy.value) == _sha_rounds(sample.value)  # rounds preserved
    for guess in (b"pw", b"", b"password", b"123456", b"None", b"dummy"):
        assert dummy.verify(guess) is False
    assert dummy_like(sample).value != dummy.value  # a fresh random password each time


# --------------------------------------------------------------------------------------------
# parse_basic_auth
# --------------------------------------------------------------------------------------------


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def test_non_utf8_password_verifies_against_apache_hash(htpasswd_bin: str) -> None:
    """The bytes the client sent reach the hash unchanged, as they do in Apache."""
    password = b"\xff\xfe\x80caf\xe9"
    for flags in (["-nbB", "-C", "4"], ["-nbm"], ["-nbs"], ["-nb5"]):
        stored = identify(apache_hash(htpasswd_bin, flags, password))
        assert stored is not None
        parsed = parse_basic_auth(["Basic " + b64(b"u:" + password)])
        assert parsed is not None
        secret = parsed[1].encode("utf-8", "surrogateescape")
        assert stored.verify(secret) is True
        assert stored.verify(parsed[1].encode("utf-8", "replace")) is False


# --------------------------------------------------------------------------------------------
# hash_password
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "password",
    [
        pytest.param("pw", id="ascii"),
        pytest.param("with:colon:s", id="colons"),
        pytest.param("ünïcødé 密码", id="unicode"),
        pytest.param("", id="empty"),
        pytest.param("L" * 100, id="over-72-bytes"),
    ],
)
def test_hash_password_accepted_by_apache(htpasswd_bin: str, tmp_path: Path, password: str) -> None:
    stored = hash_password(password, cost=4)
    assert re.fullmatch(r"\$2y\$04\$[./0-9A-Za-z]{53}", stored), stored
    assert identify(stored) == PasswordHash("bcrypt", stored)
    file = tmp_path / "htpasswd"
    file.write_text(f"# comment\nalice:{stored}\n", encoding="ascii")
    raw = password.encode()
    assert apache_verifies(htpasswd_bin, file, "alice", raw) is True
    assert apache_verifies(htpasswd_bin, file, "alice", b"x" + raw) is False
    assert identify(stored).verify(raw) is True
    assert identify(stored).verify(b"x" + raw) is False


def test_hash_password_truncates_at_72_bytes_like_apache(htpasswd_bin: str, tmp_path: Path) -> None:
    password = "a" * 72 + "tail"
    stored = hash_password(password, cost=4)
    file = tmp_path / "htpasswd"
    file.write_text(f"alice:{stored}\n")
    assert apache_verifies(htpasswd_bin, file, "alice", b"a" * 72) is True
    assert apache_verifies(htpasswd_bin, file, "alice", b"a" * 72 + b"other") is True
    assert apache_verifies(htpasswd_bin, file, "alice", b"a" * 71) is False
