"""Upload bindings, by tables: which Locations are signed, and which requests to an upload
belong to whom."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.guards.uploads import NOT_YOURS, PARAM, bind_location, binding, check
from proxy.http.routes import Operation, classify

KEY = b"k" * 32
UPLOAD = "/v2/team/app/blobs/uploads/3f2a-11"


def operation(path: str, method: str = "PATCH") -> Operation:
    op = classify(method, path.partition("?")[0])
    assert isinstance(op, Operation)
    return op


@pytest.mark.parametrize(
    ("location", "signed"),
    [
        (UPLOAD, True),
        (UPLOAD + "?_state=abc%3D", True),
        ("https://proxy.example:5043" + UPLOAD + "?_state=abc", True),
        ("/v2/team/app/blobs/sha256:" + "a" * 64, False),  # a finished blob: nothing to bind
        ("/v2/other/app/blobs/uploads/3f2a-11", False),  # another repository's upload
        ("https://elsewhere.example/somewhere", False),
        ("/v2/team/app/blobs/uploads/", False),
    ],
)
def test_which_locations_are_signed(location: str, signed: bool) -> None:
    bound = bind_location(location, "team/app", KEY, "alice")
    assert (bound != location) is signed
    if signed:
        assert bound.startswith(location)
        assert bound.endswith(f"{PARAM}={binding(KEY, 'team/app', '3f2a-11', 'alice')}")


def test_a_binding_from_the_registry_or_a_client_is_replaced() -> None:
    location = f"{UPLOAD}?_state=s&{PARAM}=forged"
    bound = bind_location(location, "team/app", KEY, "alice")
    assert bound.count(PARAM) == 1 and "forged" not in bound


@pytest.mark.parametrize(
    ("user", "key", "query_of", "expected"),
    [
        ("alice", KEY, "alice", "_state=s"),
        ("bob", KEY, "alice", None),  # another user with push rights
        (None, KEY, "alice", None),
        ("alice", b"x" * 32, "alice", None),  # another tree of workers, or another secret
        ("robot$ci", KEY, "robot$ci", "_state=s"),
        ("robot$ci", KEY, "alice", None),  # the owner's robot is someone else
    ],
)
def test_who_may_continue(user: str | None, key: bytes, query_of: str, expected: str | None
                          ) -> None:  # fmt: skip
    bound = bind_location(UPLOAD + "?_state=s", "team/app", KEY, query_of)
    path, _, query = bound.partition("?")
    answer = check(key, operation(path), query, user)
    assert answer == (NOT_YOURS if expected is None else expected)


@pytest.mark.parametrize(
    "query",
    [
        "",  # no binding: not started through this proxy
        "_state=s",
        f"{PARAM}=",
        f"{PARAM}=x",
        f"_state=s&{PARAM}=" + binding(KEY, "team/app", "other-id", "alice"),  # another upload
        f"_state=s&{PARAM}=" + binding(KEY, "other/app", "3f2a-11", "alice"),  # another repo
        "&".join([f"{PARAM}=" + binding(KEY, "team/app", "3f2a-11", "alice")] * 2),  # repeated
        f"{PARAM}=\u00e9",
    ],
)
def test_missing_forged_or_repeated_bindings_are_refused(query: str) -> None:
    assert check(KEY, operation(UPLOAD), query, "alice") is NOT_YOURS


def test_the_binding_is_removed_and_the_rest_kept_as_written() -> None:
    mine = binding(KEY, "team/app", "3f2a-11", "alice")
    query = f"_state=a%2Bb%3D&{PARAM}={mine}&digest=sha256%3A{'a' * 64}"
    assert check(KEY, operation(UPLOAD, "PUT"), query, "alice") == (
        f"_state=a%2Bb%3D&digest=sha256%3A{'a' * 64}"
    )
    # The parameter's name percent-encoded still counts as the binding.
    assert check(KEY, operation(UPLOAD), f"_regpro%78y={mine}", "alice") == ""


@given(st.text(max_size=40), st.text(max_size=40))
def test_check_never_raises(query: str, user: str) -> None:
    check(KEY, operation(UPLOAD), query, user)
