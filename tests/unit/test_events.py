"""Events between workers and replicas (proxy.state.events): the byte format round-trips anything a
Basic header can carry, and decoding never raises."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.state.events import (
    BlobGone,
    Counted,
    CredentialChecking,
    CredentialVerified,
    Event,
    LoginFailed,
    LoginSucceeded,
    decode,
    encode,
)

USERS = ["alice", "", "a:b", "nul\0inside", "é" * 100, "x" * 4096, "bad\udcff-bytes"]


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("kind", [LoginFailed, LoginSucceeded])
def test_login_events_round_trip(kind: type[LoginFailed | LoginSucceeded], user: str) -> None:
    event = kind(user, "2001:db8::1")
    assert decode(encode(event)) == event


def test_blob_gone_credential_verified_and_counted_round_trip() -> None:
    for event in (
        BlobGone("http://registry:5000/v2/a/b/blobs/sha256:" + "0" * 64),
        CredentialVerified("alice\0$2y$10$" + "x" * 53, "ab" * 32, "300.0"),
        Counted("manifest_pulls/21600/user:alice", "1733508000", "-1"),
        CredentialChecking("alice\0$2y$10$" + "x" * 53, "ab" * 32, "1"),
    ):
        assert decode(encode(event)) == event


@pytest.mark.parametrize(
    "data",
    [b"", b"F", b"X\x00\x01a", b"F\x00\x09short", b"S\xff\xff", b"B\x00\x01ab", b"F\x00\x01a"],
)
def test_malformed_events_are_dropped(data: bytes) -> None:
    assert decode(data) is None


@given(st.binary(max_size=64))
def test_decode_never_raises(data: bytes) -> None:
    event = decode(data)
    assert event is None or isinstance(
        event,
        LoginFailed | LoginSucceeded | BlobGone | CredentialVerified | CredentialChecking | Counted,
    )


@given(st.text(max_size=50), st.text(max_size=50))
def test_any_text_round_trips(user: str, address: str) -> None:
    event: Event = LoginFailed(user, address)
    assert decode(encode(event)) == event
