"""Where a connection's bytes stand against the requests read from them, by tables: each
case is the calls the parser got (the bytes, what the open body took, whether it ended, the
requests whose headers it read) and whether a request with unfinished headers is held."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.http.framing import Framing, Head

GET = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"
PART = b"GET /v2/ HTTP/1.1\r\nHost"  # the start of a request, and then nothing
PUT = b"PUT /v2/a/manifests/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"
CHUNKED = b"PATCH /v2/a/blobs/uploads/u HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
BODILESS = Head(0, 0, True)
Call = tuple[bytes, int, bool, list[Head]]

CASES: dict[str, tuple[list[Call], bool]] = {
    "a request, exactly": ([(GET, 0, False, [BODILESS])], False),
    "a request and the start of another": ([(GET + PART, 0, False, [BODILESS])], True),
    "headers trickling in": ([(PART, 0, False, [])], True),
    "headers trickling in, then complete": (
        [(PART, 0, False, []), (b": x\r\n\r\n", 0, False, [BODILESS])],
        False,
    ),
    "two requests in one write": ([(GET + GET, 0, False, [BODILESS, BODILESS])], False),
    "a blank line after a request": ([(GET + b"\r\n", 0, False, [BODILESS])], False),
    "blank lines before a request": ([(b"\r\n\r\n" + GET, 0, False, [BODILESS])], False),
    "a body, exactly": ([(PUT + b"hello", 0, False, [Head(5, 5, True)])], False),
    "a body and the start of a request": (
        [(PUT + b"hello" + PART, 0, False, [Head(5, 5, True)])],
        True,
    ),
    "a body ending as a header block does, then a start": (
        [(PUT + b"\r\n\r\nX" + b"GET / HTTP/1.1\r\n", 0, False, [Head(5, 5, True)])],
        True,
    ),
    "a body over two writes, exactly": (
        [(PUT + b"he", 0, False, [Head(5, 2, False)]), (b"llo", 3, True, [])],
        False,
    ),
    "a body over two writes, then a start": (
        [(PUT + b"he", 0, False, [Head(5, 2, False)]), (b"llo" + PART, 3, True, [])],
        True,
    ),
    "a body over two writes, then a whole request": (
        [(PUT + b"he", 0, False, [Head(5, 2, False)]), (b"llo" + GET, 3, True, [BODILESS])],
        False,
    ),
    # The body's reader was full: the parser kept the rest and took it later (a b"" call).
    "a body held back by the parser, exactly": (
        [(PUT + b"hel", 0, False, [Head(5, 3, False)]), (b"lo", 0, False, []), (b"", 2, True, [])],
        False,
    ),
    "a body held back by the parser, then a start": (
        [
            (PUT + b"hel", 0, False, [Head(5, 3, False)]),
            (b"lo" + PART, 0, False, []),
            (b"", 2, True, []),
        ],
        True,
    ),
    "a chunked body, exactly": (
        [(CHUNKED + b"5\r\nhello\r\n0\r\n\r\n", 0, False, [Head(None, 5, True)])],
        False,
    ),
    "a chunked body and the start of a request": (
        [(CHUNKED + b"5\r\nhello\r\n0\r\n\r\n" + PART, 0, False, [Head(None, 5, True)])],
        True,
    ),
    "a chunked body over two writes, exactly": (
        [
            (CHUNKED + b"5\r\nhello\r\n", 0, False, [Head(None, 5, False)]),
            (b"0\r\n\r\n", 0, True, []),
        ],
        False,
    ),
    "a chunked body over two writes, then a start": (
        [
            (CHUNKED + b"5\r\nhello\r\n", 0, False, [Head(None, 5, False)]),
            (b"0\r\n\r\nGE", 0, True, []),
        ],
        True,
    ),
    "a chunked body, a request behind it, and nothing more (cannot tell where)": (
        [
            (CHUNKED + b"5\r\nhello\r\n", 0, False, [Head(None, 5, False)]),
            (b"0\r\n\r\n" + GET, 0, True, [BODILESS]),
        ],
        False,
    ),
    "lost, then back on track at a request's end": (
        [
            (CHUNKED + b"0\r\n\r\n" + GET + PART, 0, False, [Head(None, 0, True), BODILESS]),
            (b": x\r\n\r\n", 0, False, [BODILESS]),
        ],
        False,
    ),
    "lost, and a body whose end is not known": (
        [
            (CHUNKED + b"0\r\n\r\n" + GET + PART, 0, False, [Head(None, 0, True), BODILESS]),
            (b": x\r\nContent-Length: 5\r\n\r\nhello", 0, False, [Head(5, 5, True)]),
        ],
        True,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_whether_a_request_with_unfinished_headers_is_held(name: str) -> None:
    calls, pending = CASES[name]
    framing = Framing()
    for data, took, done, heads in calls:
        framing.received(data, took, done, heads)
    assert framing.pending is pending


@given(st.lists(st.integers(1, 40), max_size=12), st.integers(0, 3))
def test_however_the_bytes_are_cut_the_answer_is_the_same(cuts: list[int], extra: int) -> None:
    """A request, one with a body, another, and maybe the start of one more, cut into writes
    anywhere: the start at the end is always seen, and none is ever imagined."""
    stream = GET + PUT + b"hello" + GET + PART[:extra]
    first, put, body = len(GET), len(GET) + len(PUT), len(GET) + len(PUT) + 5
    last = body + len(GET)
    blocks = [(0, first), (first, put), (body, last), (last, len(stream) + 1)]  # header blocks
    framing, position = Framing(), 0
    for size in [*cuts, len(stream)]:
        start, position = position, min(position + size, len(stream))
        if start == position:
            break
        in_body = max(0, min(position, body) - max(start, put))  # body bytes in this write
        heads = []
        if start < first <= position:
            heads.append(BODILESS)
        if start < put <= position:  # the PUT's headers end here: the body bytes are its own
            heads.append(Head(5, in_body, position >= body))
        if start < last <= position:
            heads.append(BODILESS)
        opened = start >= put  # the PUT's body was open before this write
        took, done = (in_body, start < body <= position) if opened else (0, False)
        framing.received(stream[start:position], took, done, heads)
        assert framing.pending is any(begin < position < end for begin, end in blocks)
    assert framing.pending is (extra > 0)
