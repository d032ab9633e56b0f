"""Unit tables for proxy.authn.credentials: hash recognition, the htpasswd/group parsers, Basic
credentials, hashing, and file editing. (Against Apache's real `htpasswd`:
tests/test_credentials.py.)"""

from __future__ import annotations

import base64

import bcrypt
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.authn import credentials
from proxy.authn.credentials import (
    AUTHORIZATION_MAX,
    SLASH_PROBLEM,
    Htpasswd,
    MalformedCredentials,
    PasswordHash,
    dummy_like,
    edit_htpasswd,
    hash_password,
    identify,
    parse_basic_auth,
    parse_groups,
    parse_htpasswd,
    placeholder_notes,
    user_name_problem,
)
from proxy.authn.htpasswd import UserFiles
from proxy.core.problems import Problem


@pytest.mark.parametrize("prefix", [b"2a", b"2b"])
def test_bcrypt_library_hashes(prefix: bytes) -> None:
    stored = bcrypt.hashpw(b"library-pw", bcrypt.gensalt(4, prefix=prefix)).decode()
    assert stored.startswith(f"${prefix.decode()}$04$")
    parsed = identify(stored)
    assert parsed is not None and parsed.scheme == "bcrypt"
    assert parsed.verify(b"library-pw") is True
    assert parsed.verify(b"library-pX") is False


@pytest.mark.parametrize(
    "stored",
    [
        pytest.param("", id="empty"),
        pytest.param("secret", id="plaintext"),
        pytest.param("password1234", id="plaintext-12"),
        pytest.param("abc!defghijkl", id="13-chars-not-crypt64"),
        pytest.param("abcdefghijklmn", id="14-chars"),
        pytest.param("$2y$05$" + "a" * 52, id="bcrypt-short"),
        pytest.param("$2y$05$" + "a" * 54, id="bcrypt-long"),
        pytest.param("$2y$5$" + "a" * 53, id="bcrypt-one-digit-cost"),
        pytest.param("$2z$05$" + "a" * 53, id="bcrypt-unknown-minor"),
        pytest.param("$3$05$" + "a" * 53, id="not-bcrypt"),
        pytest.param("$2$05$" + "J" * 53, id="bcrypt-no-minor-letter"),
        pytest.param("$2y$03$" + "J" * 53, id="bcrypt-cost-3"),
        pytest.param("$2y$32$" + "J" * 53, id="bcrypt-cost-32"),
        pytest.param("$2y$99$" + "J" * 53, id="bcrypt-cost-99"),
        pytest.param("$apr1$toolongsalt$" + "a" * 22, id="apr1-salt-9"),
        pytest.param("$apr1$salt$" + "a" * 21, id="apr1-short"),
        pytest.param("$1$salt$" + "a" * 22, id="glibc-md5-crypt"),
        pytest.param("{SHA}" + "a" * 27, id="sha1-no-padding"),
        pytest.param("{SHA}" + "a" * 28 + "=", id="sha1-long"),
        pytest.param("{SSHA}" + "a" * 27 + "=", id="ssha"),
        pytest.param("{sha}" + "a" * 27 + "=", id="sha1-lowercase-label"),
        pytest.param("$5$salt$" + "a" * 42, id="sha256-short"),
        pytest.param("$6$salt$" + "a" * 85, id="sha512-short"),
        pytest.param("$5$rounds=abc$salt$" + "a" * 43, id="sha256-bad-rounds"),
        pytest.param("$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA", id="argon2"),
        pytest.param(" sfO4CPUI9rLeY", id="crypt-leading-space"),
        pytest.param("sfO4CPUI9rLeY\n", id="crypt-trailing-newline"),
    ],
)
def test_identify_refuses(stored: str) -> None:
    assert identify(stored) is None


@pytest.mark.parametrize(
    "stored",
    [
        pytest.param("$2$05$" + "J" * 53, id="bcrypt-2-no-minor"),
        pytest.param("$2y$03$" + "J" * 53, id="bcrypt-cost-3"),
        pytest.param("$2y$00$" + "J" * 53, id="bcrypt-cost-0"),
        pytest.param("$2y$32$" + "J" * 53, id="bcrypt-cost-32"),
        pytest.param("$2y$99$" + "J" * 53, id="bcrypt-cost-99"),
        pytest.param("$2y$05$" + "a" * 53, id="bcrypt-salt-bad-last-char"),
    ],
)
def test_a_recognised_hash_never_raises(stored: str) -> None:
    """A hash identify() accepts must be usable: verify() answers False instead of raising
    (it runs in the request path), and a dummy can be made from it (reload builds one from
    the most common hash in the file)."""
    parsed = identify(stored)
    if parsed is not None:
        assert parsed.verify(b"anything") is False
    dummy_like(parsed)


@pytest.mark.parametrize(
    ("stored", "scheme", "cost"),
    [
        pytest.param("$2y$04$" + "J" * 53, "bcrypt", 4, id="bcrypt-4"),
        pytest.param("$2b$10$" + "J" * 53, "bcrypt", 10, id="bcrypt-10"),
        pytest.param("$2a$31$" + "J" * 53, "bcrypt", 31, id="bcrypt-31"),
        pytest.param("$5$salt$" + "a" * 43, "sha256-crypt", 5000, id="sha256-default"),
        pytest.param("$5$rounds=10000$salt$" + "a" * 43, "sha256-crypt", 10000, id="sha256"),
        pytest.param("$6$rounds=1000$salt$" + "a" * 86, "sha512-crypt", 1000, id="sha512"),
        pytest.param("$apr1$salt$" + "a" * 22, "apr1", 0, id="apr1"),
        pytest.param("{SHA}" + "a" * 27 + "=", "sha1", 0, id="sha1"),
        pytest.param("sfO4CPUI9rLeY", "crypt", 0, id="crypt"),
    ],
)
def test_password_hash_cost(stored: str, scheme: str, cost: int) -> None:
    parsed = identify(stored)
    assert parsed is not None
    assert (parsed.scheme, parsed.cost) == (scheme, cost)


# --------------------------------------------------------------------------------------------
# parse_htpasswd
# --------------------------------------------------------------------------------------------

BCRYPT = "$2y$04$tBimBtOD//3FLNoUnzHCLOO/5K3NywsbT9gR27dPFJ1Ib5K0oEBMq"  # "pw"
APR1 = "$apr1$lI.O5y9p$2mX8YQZoF/sZYdXD15v98/"  # "pw"
SHA1 = "{SHA}GpHWL3ymc5liWkNopqtdSjuqYHM="  # "pw"
CRYPT = "sfO4CPUI9rLeY"  # "pw"


@pytest.mark.parametrize("stored", [BCRYPT, APR1, SHA1, CRYPT])
def test_fixture_hashes_are_for_pw(stored: str) -> None:
    parsed = identify(stored)
    assert parsed is not None and parsed.verify(b"pw") and not parsed.verify(b"px")


@pytest.mark.parametrize(
    ("text", "users", "problems"),
    [
        pytest.param("", {}, [], id="empty"),
        pytest.param("\n\n   \n\t\n", {}, [], id="blank-lines"),
        pytest.param(
            f"# a comment\n\nalice:{BCRYPT}\n   # indented comment\n#bob:{APR1}\n",
            {"alice": BCRYPT},
            [],
            id="comments",
        ),
        pytest.param(
            f"alice:{BCRYPT}\r\nbob:{APR1}\r\n\r\ncarol:{SHA1}",
            {"alice": BCRYPT, "bob": APR1, "carol": SHA1},
            [],
            id="crlf-no-final-newline",
        ),
        pytest.param(
            f"  alice:{CRYPT}  \n\tbob:{SHA1}\t\n",
            {"alice": CRYPT, "bob": SHA1},
            [],
            id="surrounding-whitespace",
        ),
        pytest.param(
            f"alice:{BCRYPT}\nno-colon-here\nbob:{APR1}\n",
            {"alice": BCRYPT, "bob": APR1},
            [(2, "malformed line, expected user:hash")],
            id="no-colon",
        ),
        pytest.param(
            f":{BCRYPT}\nbob:{APR1}\n",
            {"bob": APR1},
            [(1, "malformed line, expected user:hash")],
            id="empty-user",
        ),
        pytest.param(
            f"bob:{APR1}\nal ice:{BCRYPT}\n",
            {"bob": APR1},
            [(2, "malformed line, expected user:hash")],
            id="space-in-user",
        ),
        pytest.param(
            f"alice:{BCRYPT}:extra\nbob:{APR1}\n",
            {"bob": APR1},
            [(1, "user 'alice': unrecognised or plaintext password hash")],
            id="split-on-first-colon-hash-keeps-the-rest",
        ),
        pytest.param(
            f"a:b:{CRYPT}\n",
            {},
            [(1, "user 'a': unrecognised or plaintext password hash")],
            id="user-is-before-the-first-colon",
        ),
        pytest.param(
            "alice:secret\nbob:\ncarol:" + APR1 + "\n",
            {"carol": APR1},
            [
                (1, "user 'alice': unrecognised or plaintext password hash"),
                (2, "user 'bob': unrecognised or plaintext password hash"),
            ],
            id="plaintext-and-empty-hash-refused",
        ),
        pytest.param(
            f"alice:{BCRYPT}\nbob:{SHA1}\n\nalice:{APR1}\n",
            {"alice": BCRYPT, "bob": SHA1},
            [(4, "user 'alice' repeated; first entry wins")],
            id="duplicate-first-wins",
        ),
        pytest.param(
            f"# header\r\nalice:{BCRYPT}\r\nbroken\r\n\r\nalice:{CRYPT}\r\nx y:z\r\nbob:{APR1}",
            {"alice": BCRYPT, "bob": APR1},
            [
                (3, "malformed line, expected user:hash"),
                (5, "user 'alice' repeated; first entry wins"),
                (6, "malformed line, expected user:hash"),
            ],
            id="several-problems-crlf",
        ),
        pytest.param(
            f"alice:secret\nalice:{BCRYPT}\n  bob:{BCRYPT} \nbob:{BCRYPT}\ncarol/x:{BCRYPT}\r\n",
            {"bob": BCRYPT},
            [
                (1, "user 'alice': unrecognised or plaintext password hash"),
                (2, "user 'alice' repeated; first entry wins"),
                (4, "user 'bob' repeated; first entry wins"),
                (5, f"user 'carol/x': {SLASH_PROBLEM}"),
            ],
            id="bcrypt-lines-after-a-refused-or-padded-line",
        ),
        pytest.param(
            f"alice:{BCRYPT}\nalice/sub:{APR1}\n/x:{SHA1}\nbob:{CRYPT}\n",
            {"alice": BCRYPT, "bob": CRYPT},
            [(2, f"user 'alice/sub': {SLASH_PROBLEM}"), (3, f"user '/x': {SLASH_PROBLEM}")],
            id="slash-in-user-refused",
        ),
    ],
)
def test_parse_htpasswd(text: str, users: dict[str, str], problems: list[tuple[int, str]]) -> None:
    parsed = parse_htpasswd(text, "conf/htpasswd")
    assert {u: h.value for u, h in parsed.users.items()} == users
    assert all(h == identify(h.value) for h in parsed.users.values())
    assert parsed.problems == tuple(Problem("conf/htpasswd", n, m) for n, m in problems)


_LINES = st.sampled_from(
    [f"alice:{BCRYPT}", f"bob:{BCRYPT}", f"bob:{BCRYPT}\r", f"carol:{BCRYPT[:-1]}", "",
     "# alice", f"a/b:{BCRYPT}", f"dave:{APR1}", f" erin:{BCRYPT}", f"frank:{BCRYPT}\rx"]
)  # fmt: skip


@given(st.lists(_LINES, max_size=8), st.sampled_from(["\n", "\r\n", ""]))
@example([f"alice:{BCRYPT}", f"bob:{BCRYPT}"], "")
@example([f"alice:{BCRYPT}", f"alice:{BCRYPT}"], "\n")
def test_a_file_of_bcrypt_lines_alone_reads_as_line_by_line(lines: list[str], end: str) -> None:
    # A trailing comment sends a file down the line-by-line path, and adds nothing.
    text = "\n".join(lines) + end
    line_by_line = parse_htpasswd(text + ("" if text.endswith("\n") else "\n") + "#\n", "f")
    assert parse_htpasswd(text, "f") == line_by_line


@given(st.text("ab\n\r", max_size=40), st.integers(1, 8))
@example("", 1)
@example("a\n", 1)
@example("\n\n", 1)
def test_a_text_split_in_pieces_is_split_as_a_whole(text: str, size: int) -> None:
    """A reload's thread takes the files a piece at a time (a call into C holds the event loop
    until it returns); the lines are those of one split."""
    pieces = list(credentials._pieces(text, size))
    assert "".join(pieces) == text
    assert all(piece.endswith("\n") and len(piece) >= size for piece in pieces[:-1])
    assert credentials._split(text, size) == text.split("\n")


@given(st.lists(_LINES, max_size=8), st.sampled_from(["\n", "\r\n", ""]), st.integers(1, 200))
def test_a_file_of_bcrypt_lines_reads_the_same_in_pieces(
    lines: list[str], end: str, size: int
) -> None:
    text = "\n".join(lines) + end
    assert credentials._bcrypt_only(text, size) == credentials._bcrypt_only(text, len(text) + 1)


def test_parse_htpasswd_users_verify() -> None:
    parsed = parse_htpasswd(f"alice:{BCRYPT}\nbob:{APR1}\ncarol:{SHA1}\ndave:{CRYPT}\n", "f")
    for user in ("alice", "bob", "carol", "dave"):
        assert parsed.users[user].verify(b"pw") is True
        assert parsed.users[user].verify(b"pw ") is False


@pytest.mark.parametrize(
    "separator",
    [
        pytest.param("\u2028", id="U+2028-line-separator"),
        pytest.param("\u2029", id="U+2029-paragraph-separator"),
        pytest.param("\x85", id="U+0085-NEL"),
        pytest.param("\x0c", id="form-feed"),
        pytest.param("\x1c", id="U+001C"),
    ],
)
def test_line_numbers_count_newlines_only(separator: str) -> None:
    """Apache reads the files line by line on '\\n'; other Unicode line breaks inside a
    comment neither start a new line nor shift the line numbers of later problems."""
    text = f"# comment{separator}with more words\nalice:{BCRYPT}\nbroken\n"
    parsed = parse_htpasswd(text, "h")
    assert set(parsed.users) == {"alice"}
    assert parsed.problems == (Problem("h", 3, "malformed line, expected user:hash"),)
    groups, problems = parse_groups(f"# note{separator}more words\npusher: a\nbad line\n", "g")
    assert groups == {"pusher": frozenset({"a"})}
    assert problems == (Problem("g", 3, "malformed line, expected 'group: user ...'"),)


@pytest.mark.parametrize(
    ("problem", "text"),
    [
        (Problem("conf/htpasswd", 7, "bad"), "conf/htpasswd:7: bad"),
        (Problem("conf/htpasswd", 0, "cannot read"), "conf/htpasswd: cannot read"),
    ],
)
def test_problem_str(problem: Problem, text: str) -> None:
    assert str(problem) == text


# --------------------------------------------------------------------------------------------
# typical_hash and dummy_like
# --------------------------------------------------------------------------------------------


BCRYPT64 = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
STANDARD64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _bcrypt(cost: int, password: bytes = b"pw") -> str:
    return "$2y$" + bcrypt.hashpw(password, bcrypt.gensalt(cost)).decode()[4:]


def test_typical_hash_empty() -> None:
    assert Htpasswd({}).typical_hash() is None


def test_typical_hash_bcrypt_cost() -> None:
    hashes = [_bcrypt(4), _bcrypt(4), _bcrypt(5)]
    text = "\n".join(f"u{i}:{h}" for i, h in enumerate(hashes))
    typical = parse_htpasswd(text, "f").typical_hash()
    assert typical is not None and typical.value[:7] == "$2y$04$"


@given(st.lists(st.sampled_from([4, 5, 6]), min_size=1, max_size=12))
def test_a_file_of_bcrypt_lines_keeps_text_and_answers_as_objects_would(costs: list[int]) -> None:
    """Such a file's users are kept as the file's text (no object per user); lookups and the
    typical hash are those of the same users held one object each."""
    salts = {4: "a", 5: "b", 6: "c"}
    hashes = [f"$2y$0{c}${salts[c] * 53}" for c in costs]
    parsed = parse_htpasswd("".join(f"u{i}:{h}\n" for i, h in enumerate(hashes)), "f")
    assert isinstance(parsed.users, credentials.BcryptUsers)
    objects = Htpasswd({f"u{i}": PasswordHash("bcrypt", h) for i, h in enumerate(hashes)})
    assert parsed.typical_hash() == objects.typical_hash()
    assert dict(parsed.users) == objects.users and len(parsed.users) == len(hashes)
    assert parsed.users.get("u0") == PasswordHash("bcrypt", hashes[0])
    assert parsed.users.get("nobody") is None and "nobody" not in parsed.users


def test_dummy_like_bcrypt_cost_10() -> None:
    dummy = dummy_like(identify(_bcrypt(10)))
    assert dummy.scheme == "bcrypt" and dummy.value[3:7] == "$10$"
    assert dummy.verify(b"pw") is False


@pytest.mark.parametrize("cost", [4, 5, 10])
def test_a_bcrypt_dummy_is_checked_as_a_real_hash_is(
    cost: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bcrypt reads its salt (one it cannot read is refused at once, which would answer
    unknown users sooner) and hashes a password with it at the sample's cost, to another
    digest; the digest is 23 bytes of bcrypt base64, as a real one. Made without hashing."""

    def no_hashing(password: bytes, salt: bytes) -> bytes:
        raise AssertionError("a decoy is not the hash of a password")

    sample = identify(_bcrypt(cost))
    with monkeypatch.context() as patched:
        patched.setattr(bcrypt, "hashpw", no_hashing)
        dummy, again = (dummy_like(sample).value.encode() for _ in range(2))
    assert dummy.startswith(b"$2b$%02d$" % cost) and len(dummy) == 60
    salted = bcrypt.hashpw(b"pw", dummy[:29])
    assert salted[:29] == dummy[:29] and salted != dummy
    assert bcrypt.checkpw(b"pw", dummy) is False  # no ValueError: the salt was read
    assert bcrypt.checkpw(b"pw", salted) is True
    with pytest.raises(ValueError, match="Invalid salt"):
        bcrypt.checkpw(b"pw", dummy[:28] + b"z" + dummy[29:])  # what such a refusal looks like
    standard = dummy[29:].translate(bytes.maketrans(BCRYPT64, STANDARD64)) + b"="
    assert len(base64.b64decode(standard, validate=True)) == 23
    assert base64.b64encode(base64.b64decode(standard)) == standard  # its last bits are zero
    assert again[7:29] != dummy[7:29] and again[29:] != dummy[29:]


def test_dummy_like_none_is_bcrypt() -> None:
    dummy = dummy_like(None)
    assert dummy.scheme == "bcrypt"
    assert identify(dummy.value) == dummy
    assert dummy.verify(b"") is False
    assert dummy.verify(b"pw") is False


# --------------------------------------------------------------------------------------------
# parse_groups / groups_of
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "groups", "problems"),
    [
        pytest.param("", {}, [], id="empty"),
        pytest.param("pusher: alice bob\n", {"pusher": {"alice", "bob"}}, [], id="one"),
        pytest.param(
            "pusher: alice\nreaders: carol\npusher: bob\npusher: alice dave\n",
            {"pusher": {"alice", "bob", "dave"}, "readers": {"carol"}},
            [],
            id="multi-line-merge",
        ),
        pytest.param(
            "   pusher   :   alice \t  bob   \n\treaders:carol\n",
            {"pusher": {"alice", "bob"}, "readers": {"carol"}},
            [],
            id="extra-spaces-and-tabs",
        ),
        pytest.param(
            "# comment\n\n  # indented\r\npusher: alice\r\n\r\n",
            {"pusher": {"alice"}},
            [],
            id="comments-blank-crlf",
        ),
        pytest.param(
            "empty:\nempty2:   \n", {"empty": set(), "empty2": set()}, [], id="no-members"
        ),
        pytest.param(
            "pusher: alice\nno colon here\n: bob\ntwo words: carol\nreaders: dave\n",
            {"pusher": {"alice"}, "readers": {"dave"}},
            [
                (2, "malformed line, expected 'group: user ...'"),
                (3, "malformed line, expected 'group: user ...'"),
                (4, "malformed line, expected 'group: user ...'"),
            ],
            id="malformed-lines",
        ),
        pytest.param(
            "\n\n\npusher alice\n",
            {},
            [(4, "malformed line, expected 'group: user ...'")],
            id="line-number-after-blanks",
        ),
        pytest.param(
            "team/a: alice\npusher: alice bob/x carol\n",
            {"pusher": {"alice", "carol"}},
            [(1, f"group 'team/a': {SLASH_PROBLEM}"), (2, f"member 'bob/x': {SLASH_PROBLEM}")],
            id="slash-in-group-or-member-refused",
        ),
    ],
)
def test_parse_groups(
    text: str, groups: dict[str, set[str]], problems: list[tuple[int, str]]
) -> None:
    parsed, found = parse_groups(text, "conf/groups")
    assert parsed == {g: frozenset(u) for g, u in groups.items()}
    assert all(isinstance(u, frozenset) for u in parsed.values())
    assert found == tuple(Problem("conf/groups", n, m) for n, m in problems)


GROUPS = {
    "pusher": frozenset({"alice", "bob"}),
    "readers": frozenset({"alice", "carol"}),
    "empty": frozenset(),
}


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("alice", {"pusher", "readers"}),
        ("bob", {"pusher"}),
        ("carol", {"readers"}),
        ("dave", set()),
        ("ali", set()),
        ("Alice", set()),
        ("", set()),
    ],
)
def test_groups_of(user: str, expected: set[str]) -> None:
    files = UserFiles.build(Htpasswd({}), GROUPS, credentials.DEFAULT_DUMMY_SAMPLE)
    assert files.groups_of(user) == frozenset(expected)


# --------------------------------------------------------------------------------------------
# parse_basic_auth
# --------------------------------------------------------------------------------------------


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param([], None, id="none"),
        pytest.param(["Bearer abc.def.ghi"], None, id="bearer"),
        pytest.param(['Digest username="a", realm="r"'], None, id="digest"),
        pytest.param(["Negotiate " + b64(b"alice:pw")], None, id="negotiate"),
        pytest.param(["Basicx " + b64(b"alice:pw")], None, id="scheme-prefix-is-not-basic"),
        pytest.param(["Basic " + b64(b"alice:pw")], ("alice", "pw"), id="basic"),
        pytest.param(["basic " + b64(b"alice:pw")], ("alice", "pw"), id="lowercase-scheme"),
        pytest.param(["BASIC " + b64(b"alice:pw")], ("alice", "pw"), id="uppercase-scheme"),
        pytest.param(["  Basic   " + b64(b"alice:pw") + "  "], ("alice", "pw"), id="spaces"),
        pytest.param(["\tBasic \t" + b64(b"alice:pw") + "\t"], ("alice", "pw"), id="tabs"),
        pytest.param(["\x1cBasic " + b64(b"alice:pw")], None, id="file-separator-not-space"),
        pytest.param(["Basic " + b64(b"alice:")], ("alice", ""), id="empty-password"),
        pytest.param(["Basic " + b64(b":pw")], ("", "pw"), id="empty-user"),
        pytest.param(["Basic " + b64(b":")], None, id="empty-user-and-password-anonymous"),
        pytest.param(["Basic " + b64(b"alice:a:b::c:")], ("alice", "a:b::c:"), id="colons"),
        pytest.param(["Basic " + b64(b"alice::")], ("alice", ":"), id="password-is-colon"),
        pytest.param(
            ["Basic " + b64("jürgen:pässwörd 密码".encode())],
            ("jürgen", "pässwörd 密码"),
            id="utf8",
        ),
        pytest.param(["Basic " + b64(b"a\x00b:p\x00w")], ("a\x00b", "p\x00w"), id="nul"),
    ],
)
def test_parse_basic_auth(values: list[str], expected: tuple[str, str] | None) -> None:
    assert parse_basic_auth(values) == expected


@pytest.mark.parametrize(
    ("values", "match"),
    [
        pytest.param(["Basic " + b64(b"a:b"), "Basic " + b64(b"c:d")], "several", id="two-basic"),
        pytest.param(["Bearer x", "Basic " + b64(b"c:d")], "several", id="bearer-and-basic"),
        # ASCII only: no Unicode case folding or trimming decides what the scheme is.
        pytest.param(["Ba\u017fic " + b64(b"a:b")], "not ASCII", id="long-s-scheme"),
        pytest.param(["\u00a0Basic " + b64(b"a:b")], "not ASCII", id="nbsp-before"),
        pytest.param(["Basic\u2028" + b64(b"a:b")], "not ASCII", id="line-separator"),
        pytest.param(["Basic " + b64(b"a:b") + "\x85"], "not ASCII", id="nel-after"),
        pytest.param(["", ""], "several", id="two-empty"),
        pytest.param(["Basic !!!!"], "not valid base64", id="bad-chars"),
        pytest.param(["Basic " + b64(b"alice:pw")[:-1]], "not valid base64", id="bad-padding"),
        pytest.param(["Basic YWxpY2U6cHc"], "not valid base64", id="missing-padding"),
        pytest.param(["Basic YWxp Y2U6cHc="], "not valid base64", id="inner-space"),
        pytest.param(["Basic " + b64(b"alice")], "no ':'", id="missing-colon"),
        pytest.param(["Basic " + b64(b"")], "no ':'", id="empty-payload"),
        pytest.param(["Basic"], "no ':'", id="scheme-only"),
        pytest.param(["Basic " + b64(b"u:" + b"p" * 4000)], "too long", id="too-long-basic"),
        pytest.param(["Bearer " + "t" * AUTHORIZATION_MAX], "too long", id="too-long-any"),
    ],
)
def test_parse_basic_auth_malformed(values: list[str], match: str) -> None:
    with pytest.raises(MalformedCredentials, match=match):
        parse_basic_auth(values)


def test_malformed_credentials_is_a_value_error() -> None:
    assert issubclass(MalformedCredentials, ValueError)


def test_parse_basic_auth_length_boundary() -> None:
    at_limit = "Bearer " + "t" * (AUTHORIZATION_MAX - len("Bearer "))
    assert len(at_limit) == AUTHORIZATION_MAX
    assert parse_basic_auth([at_limit]) is None
    with pytest.raises(MalformedCredentials, match="too long"):
        parse_basic_auth([at_limit + "t"])


@pytest.mark.parametrize(
    ("user", "password"),
    [
        pytest.param(b"alice", b"\xff\xfe\x80", id="password"),
        pytest.param(b"\xe9l\xe8ve", b"caf\xe9", id="latin-1-user-and-password"),
        pytest.param(b"bob", b"\xc3", id="truncated-utf8"),
        pytest.param(b"bob", b"ok-\xed\xa0\x80-surrogate", id="encoded-surrogate"),
        pytest.param(b"bob", bytes(range(128, 256)), id="all-high-bytes"),
    ],
)
def test_parse_basic_auth_non_utf8_round_trips(user: bytes, password: bytes) -> None:
    parsed = parse_basic_auth(["Basic " + b64(user + b":" + password)])
    assert parsed is not None
    got_user, got_password = parsed
    assert got_user.encode("utf-8", "surrogateescape") == user
    assert got_password.encode("utf-8", "surrogateescape") == password


def test_hash_password_default_cost_is_10() -> None:
    stored = hash_password("pw")
    assert stored.startswith("$2y$10$")
    assert identify(stored).verify(b"pw") is True


def test_hash_password_is_salted() -> None:
    assert hash_password("pw", cost=4) != hash_password("pw", cost=4)


@pytest.mark.parametrize("cost", [-1, 0, 3, 18, 31])
def test_hash_password_cost_out_of_range(cost: int) -> None:
    with pytest.raises(ValueError, match="bcrypt cost must be between 4 and 17"):
        hash_password("pw", cost=cost)


@pytest.mark.parametrize("cost", [4, 5, 12, 16, 17])
def test_hash_password_cost_in_range(monkeypatch: pytest.MonkeyPatch, cost: int) -> None:
    """The bounds are inclusive; hashing itself is stubbed (cost 17 takes seconds)."""
    salts: list[bytes] = []

    def fake_hashpw(password: bytes, salt: bytes) -> bytes:
        salts.append(salt)
        return salt[:7] + b"." * 53

    monkeypatch.setattr(credentials.bcrypt, "hashpw", fake_hashpw)
    stored = hash_password("pw", cost=cost)
    assert stored == f"$2y${cost:02d}$" + "." * 53
    assert len(salts) == 1 and salts[0].startswith(f"$2b${cost:02d}$".encode())


# --------------------------------------------------------------------------------------------
# edit_htpasswd
# --------------------------------------------------------------------------------------------

ORIGINAL = (
    "# regproxy users\n"
    f"alice:{BCRYPT}\n"
    "\n"
    "# bob is a pusher\n"
    f"bob:{APR1}\n"
    f"#carol:{SHA1}\n"
    f"alice2:{CRYPT}\n"
    "   # trailing comment   \n"
)
NEW = "$2y$04$" + "N" * 53


@pytest.mark.parametrize(
    ("user", "new_hash", "expected_lines", "found"),
    [
        pytest.param(
            "dave",
            NEW,
            [*ORIGINAL.splitlines(), f"dave:{NEW}"],
            False,
            id="add-appends",
        ),
        pytest.param(
            "carol",
            NEW,
            [*ORIGINAL.splitlines(), f"carol:{NEW}"],
            False,
            id="commented-out-user-is-not-the-user",
        ),
        pytest.param(
            "bob",
            NEW,
            [f"bob:{NEW}" if line.startswith("bob:") else line for line in ORIGINAL.splitlines()],
            True,
            id="change-in-place",
        ),
        pytest.param(
            "alice",
            NEW,
            [
                f"alice:{NEW}" if line.startswith("alice:") else line
                for line in ORIGINAL.splitlines()
            ],
            True,
            id="change-not-the-prefix-user",
        ),
        pytest.param(
            "alice",
            None,
            [line for line in ORIGINAL.splitlines() if not line.startswith("alice:")],
            True,
            id="delete",
        ),
        pytest.param(
            "alice2",
            None,
            [line for line in ORIGINAL.splitlines() if not line.startswith("alice2:")],
            True,
            id="delete-not-the-other-user",
        ),
        pytest.param("nobody", None, ORIGINAL.splitlines(), False, id="delete-missing"),
    ],
)
def test_edit_htpasswd(
    user: str, new_hash: str | None, expected_lines: list[str], found: bool
) -> None:
    text, was_there = edit_htpasswd(ORIGINAL, user, new_hash)
    assert was_there is found
    assert text.endswith("\n")
    assert text.splitlines() == expected_lines
    parsed = parse_htpasswd(text, "f")
    assert not parsed.problems
    if new_hash is None:
        assert user not in parsed.users
    else:
        assert parsed.users[user].value == new_hash


@pytest.mark.parametrize(
    ("text", "user", "new_hash", "expected", "found"),
    [
        pytest.param("", "alice", NEW, f"alice:{NEW}\n", False, id="empty-file"),
        pytest.param(f"alice:{BCRYPT}\n", "alice", None, "", True, id="delete-only-user"),
        pytest.param(
            f"alice:{BCRYPT}", "bob", NEW, f"alice:{BCRYPT}\nbob:{NEW}\n", False,
            id="no-final-newline",
        ),
        pytest.param(
            f"alice:{BCRYPT}\nbob:{APR1}\nalice:{SHA1}\n", "alice", NEW,
            f"alice:{NEW}\nbob:{APR1}\n", True, id="change-duplicate-keeps-one",
        ),
        pytest.param(
            f"alice:{BCRYPT}\nbob:{APR1}\nalice:{SHA1}\n", "alice", None,
            f"bob:{APR1}\n", True, id="delete-removes-duplicates",
        ),
        pytest.param(
            f"  alice:{BCRYPT}\nbob:{APR1}\n", "alice", NEW,
            f"alice:{NEW}\nbob:{APR1}\n", True, id="indented-line",
        ),
    ],
)  # fmt: skip
def test_edit_htpasswd_cases(
    text: str, user: str, new_hash: str | None, expected: str, found: bool
) -> None:
    assert edit_htpasswd(text, user, new_hash) == (expected, found)


def test_edit_htpasswd_keeps_crlf_file_content() -> None:
    text = f"# c\r\nalice:{BCRYPT}\r\nbob:{APR1}\r\n"
    new_text, found = edit_htpasswd(text, "bob", NEW)
    assert found
    assert new_text.splitlines() == ["# c", f"alice:{BCRYPT}", f"bob:{NEW}"]


@pytest.mark.parametrize("separator", ["\u2028", "\x85", "\x0c"])
def test_edit_htpasswd_keeps_comments_with_unicode_line_breaks(separator: str) -> None:
    """A comment is kept byte for byte: a Unicode line break inside it must not turn its
    second half into a (malformed) line of its own."""
    text = f"# note{separator}second half\nalice:{BCRYPT}\n"
    new_text, found = edit_htpasswd(text, "bob", NEW)
    assert found is False
    assert new_text == text + f"bob:{NEW}\n"
    assert parse_htpasswd(new_text, "f").problems == ()


@pytest.mark.parametrize("user", ["", "a b", "a:b", "#alice", "tab\tuser", "new\nline", " x"])
def test_edit_htpasswd_invalid_user(user: str) -> None:
    with pytest.raises(ValueError, match="invalid user name"):
        edit_htpasswd(f"alice:{BCRYPT}\n", user, NEW)


@pytest.mark.parametrize(
    ("text", "kind", "lines"),
    [
        (f"alice:{BCRYPT}\nAlice:{BCRYPT}\n# Bob:x\nal@corp:{BCRYPT}\na.b_c:x\n", "user", [2, 4]),
        (f"ok:{BCRYPT}\nbad/one:{BCRYPT}\n", "user", []),  # refused as a problem instead
        ("devs: a\nDomain Admins: b\nops-team: c\nQA: d\n", "group", [2, 4]),
    ],
)
def test_placeholder_notes(text: str, kind: str, lines: list[int]) -> None:
    notes = placeholder_notes(text, "f", kind)
    assert [n.line for n in notes] == lines
    assert all(f"never matches ${{{kind}}}" in n.message for n in notes)


@pytest.mark.parametrize(
    ("user", "problem"),
    [
        ("alice", None),
        ("Alice", None),  # Apache accepts it; `check` notes that ${user} passes it by
        ("alice/sub", "'/' is not allowed"),
        ("al ice", "no spaces"),
        ("#x", "leading '#'"),
    ],
)
def test_user_name_problem(user: str, problem: str | None) -> None:
    found = user_name_problem(user)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_a_slashed_user_can_be_deleted_but_not_added() -> None:
    text = f"alice/sub:{BCRYPT}\nbob:{BCRYPT}\n"
    assert edit_htpasswd(text, "alice/sub", None) == (f"bob:{BCRYPT}\n", True)
    with pytest.raises(ValueError, match="'/' is not allowed"):
        edit_htpasswd(text, "alice/sub", BCRYPT)
