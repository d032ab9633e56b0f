"""Header rewriting in both directions (proxy.upstream.forward): tables over the pure functions."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.upstream.forward import END_TO_END, request_headers, response_headers, rewrite_location

UPSTREAM = "http://127.0.0.1:5000"
PUBLIC = "https://registry.example:5043"


def proxy(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


@pytest.mark.parametrize(
    ("connection", "kept", "dropped"),
    [
        ("Host", ["Host"], []),
        ("host, content-type, CONTENT-LENGTH", ["Host", "Content-Type", "Content-Length"], []),
        ("Range, Content-Range, Accept", ["Range", "Content-Range", "Accept"], []),
        ("If-None-Match, Expect", ["If-None-Match", "Expect"], []),
        ("close, X-Secret-Hop", ["Host"], ["X-Secret-Hop"]),
        ("keep-alive,X-Secret-Hop ,  Host", ["Host"], ["X-Secret-Hop", "Keep-Alive"]),
        ("X-Forwarded-Proto, X-Forwarded-For", [], []),  # set by the proxy in any case
    ],
)
def test_connection_cannot_name_end_to_end_request_headers_away(
    connection: str, kept: list[str], dropped: list[str]
) -> None:
    headers = proxy(
        ("Host", "registry.example:5043"),
        ("Connection", connection),
        ("Keep-Alive", "timeout=5"),
        ("Content-Type", "application/octet-stream"),
        ("Content-Length", "3"),
        ("Range", "bytes=0-"),
        ("Content-Range", "0-2"),
        ("Accept", "*/*"),
        ("If-None-Match", '"x"'),
        ("Expect", "100-continue"),
        ("X-Secret-Hop", "1"),
    )
    out = request_headers(headers, "10.0.0.1")
    for name in kept:
        assert out[name] == headers[name]
    for name in dropped:
        assert name not in out
    assert "Connection" not in out
    assert out["X-Forwarded-Proto"] == "https" and out["X-Forwarded-For"] == "10.0.0.1"


def test_every_x_forwarded_header_from_the_client_is_replaced() -> None:
    """The registry builds Locations from X-Forwarded-Port and -Host, and reads -Proto."""
    headers = proxy(
        ("Host", "registry.example"),
        ("X-Forwarded-Port", "6666"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Prefix", "/evil"),
        ("Forwarded", "host=evil.example"),
    )
    out = request_headers(headers, "10.0.0.1")
    assert sorted(out) == ["Host", "X-Forwarded-For", "X-Forwarded-Proto"]
    assert (out["X-Forwarded-For"], out["X-Forwarded-Proto"]) == ("10.0.0.1", "https")


def test_unicode_folding_cannot_turn_a_name_into_host() -> None:
    """'\u212a' (Kelvin) lowers to 'k' in Python; names are folded ASCII-only, so a
    Connection token spelled with it names nothing the proxy knows."""
    headers = proxy(("Host", "h"), ("Keep-Alive", "1"), ("Connection", "\u212aeep-Alive"))
    out = request_headers(headers, "10.0.0.1")
    assert out["Host"] == "h" and "Keep-Alive" not in out  # hop-by-hop anyway


@pytest.mark.parametrize(
    "name",
    ["Location", "Docker-Content-Digest", "Docker-Upload-UUID", "Content-Type", "Range", "Link"],
)
def test_connection_cannot_name_end_to_end_response_headers_away(name: str) -> None:
    headers = proxy(("Connection", f"close, {name}, X-Hop"), (name, "v"), ("X-Hop", "1"))
    out = response_headers(headers, UPSTREAM, PUBLIC)
    assert out[name] == "v" and "X-Hop" not in out


def test_end_to_end_names_are_lower_case() -> None:
    assert all(name == name.lower() for name in END_TO_END)


@pytest.mark.parametrize(
    ("location", "upstream", "expected"),
    [
        # the upstream's own address, whatever the scheme the registry put in front of it
        (
            f"{UPSTREAM}/v2/a/blobs/uploads/u?_state=x",
            UPSTREAM,
            f"{PUBLIC}/v2/a/blobs/uploads/u?_state=x",
        ),
        ("https://127.0.0.1:5000/v2/a/blobs/uploads/u", UPSTREAM, f"{PUBLIC}/v2/a/blobs/uploads/u"),
        ("HTTPS://127.0.0.1:5000/v2/x", UPSTREAM, f"{PUBLIC}/v2/x"),
        ("//127.0.0.1:5000/v2/x", UPSTREAM, f"{PUBLIC}/v2/x"),
        # no port: the default of either scheme (clients omit a default port from Host)
        ("https://reg/v2/x", "http://reg", f"{PUBLIC}/v2/x"),
        ("http://reg/v2/x", "https://reg", f"{PUBLIC}/v2/x"),
        ("http://reg:80/v2/x", "http://reg", f"{PUBLIC}/v2/x"),
        # somewhere else: left alone
        ("http://reg/v2/x", "http://reg:5000", "http://reg/v2/x"),
        ("https://127.0.0.1:5001/v2/x", UPSTREAM, "https://127.0.0.1:5001/v2/x"),
        ("https://blobs.example/sha256/x", UPSTREAM, "https://blobs.example/sha256/x"),
        ("/v2/a/blobs/uploads/u", UPSTREAM, "/v2/a/blobs/uploads/u"),
        ("http://127.0.0.1:port/v2/x", UPSTREAM, "http://127.0.0.1:port/v2/x"),
    ],
)
def test_rewrite_location(location: str, upstream: str, expected: str) -> None:
    assert rewrite_location(location, upstream, PUBLIC) == expected
