r"""Reading access logs back: regproxy's own formats (`common`, `combined`,
`combined_duration`, `json`) and the Apache and nginx recipes' default ones (Apache's common and
combined, nginx's combined), told apart line by line. Pure, but for the
functions that open and read files (`open_binary`, `read_lines`, `pieces`, `open_log`).

Values are unescaped back to what was received: Apache's `\"`, `\\`, `\n`... and `\xhh`, and
nginx's `\xHH`; bytes that are not UTF-8 come back as surrogate escapes, as aiohttp hands them
over. A line that is none of these formats is `None`: the caller counts it, it is never fatal.
"""

from __future__ import annotations

import functools
import gzip
import io
import itertools
import json
import math
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, NamedTuple, cast

GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 20  # bytes read at a time


class Logged(NamedTuple):  # a tuple: one is made per line, and a dataclass costs more to make
    """One logged request: when (epoch seconds), from where, who (None: no user logged), the
    request line's method and target (path and query, as sent) and the status answered. A
    request line that is not `METHOD TARGET HTTP/x` (Apache's `-`, TLS bytes on a plain port)
    has method "" and the line as target."""

    time: float
    client: str
    user: str | None
    method: str
    target: str
    status: int


# The request line of a registry request is split here (one pass over the line); any other is
# taken whole, escapes and all, from the last group.
_APACHE = re.compile(
    r"(\S+) \S+ (.+?) \[([^\]]+)\] "
    r'"(?:([A-Z]+) ([^\s"\\]+) HTTP/\d\.\d|([^"\\]*(?:\\.[^"\\]*)*))"'
    r" (\d{3}) (?:\d+|-)"
    r'(?: "[^"\\]*(?:\\.[^"\\]*)*" "[^"\\]*(?:\\.[^"\\]*)*")?(?: \d+)?'
)
# `_APACHE` for the lines it reads the same way without trying alternatives or backtracking:
# fields without spaces, a stamp as wide as `apache_time`'s, no backslash anywhere. (The first
# ` [` then ends the user for both; `\S`, `\s` and `\d` are Unicode classes in both.)
_PLAIN = re.compile(
    r'([^\s\\]+) [^\s\\]+ ([^\s\\]+) \[([^\]]{26})\] "([A-Z]+) ([^\s"\\]+) HTTP/\d\.\d"'
    r' (\d{3}) (?:\d+|-)(?: "[^"\\]*" "[^"\\]*")?(?: \d+)?'
)
# `parse_common`'s usual line, as read (line end and all), and never a `json` line: a caller
# that takes the fields of a match reads what `parse_line` would.
USUAL_LINE = re.compile(r"(?!\{)" + _PLAIN.pattern + r"[\r\n]*")
_REQUEST = re.compile(r"([A-Z]+) (\S+) HTTP/\d\.\d")
_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|[bnrtv\"\\])")
_NAMED = {b"b": b"\b", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v", b'"': b'"',
          b"\\": b"\\"}  # fmt: skip
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, 1)}


def unescape(text: str) -> str:
    """The value behind Apache's (or nginx's) escapes of it."""
    if "\\" not in text:
        return text

    def one(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        return bytes([int(code[1:], 16)]) if code[:1] == b"x" else _NAMED[code]

    raw = _ESCAPE.sub(one, text.encode("utf-8", "surrogateescape"))
    return raw.decode("utf-8", "surrogateescape")


def _days(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil)."""
    year -= month <= 2
    era = year // 400
    of_era = year - era * 400
    of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    return era * 146097 + (of_era * 365 + of_era // 4 - of_era // 100 + of_year) - 719468


@functools.lru_cache(maxsize=4096)  # a busy log repeats each second many times
def apache_time(text: str) -> float:
    """Epoch seconds of `%d/%b/%Y:%H:%M:%S %z` (`23/Nov/2026:18:24:33 +0100`); ValueError
    otherwise. Written out: strptime would cost more than the rest of the line."""
    if len(text) != 26 or text[2] != "/" or text[6] != "/" or text[20] != " ":
        raise ValueError(text)
    month = _MONTHS.get(text[3:6])
    day, hour, minute, second = int(text[0:2]), int(text[12:14]), int(text[15:17]), int(text[18:20])
    if month is None or not (1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        raise ValueError(text)
    sign = {"+": 1, "-": -1}[text[21]]
    offset = sign * (int(text[22:24]) * 3600 + int(text[24:26]) * 60)
    moment = _days(int(text[7:11]), month, day) * 86400 + hour * 3600 + minute * 60 + second
    return float(moment - offset)


def _user(text: str) -> str | None:
    return None if text in ("-", "") else text


def parse_apache(line: str) -> Logged | None:
    """A common, combined or combined + duration line (Apache's, nginx's or regproxy's)."""
    match = _APACHE.fullmatch(line)
    if match is None:
        return None
    client, user, stamp, method, target, other, status = match.groups()
    try:
        moment = apache_time(stamp)
    except (ValueError, KeyError):
        return None
    if method is None:  # escapes, or not `METHOD TARGET HTTP/x.y`: read it after unescaping
        request = unescape(other)
        parts = _REQUEST.fullmatch(request)
        method, target = parts.groups() if parts else ("", request)
    if "\\" in client or "\\" in user:
        client, user = unescape(client), unescape(user)
    return Logged(moment, client, None if user == "-" else user, method, target, int(status))


def parse_common(line: str) -> Logged | None:
    """`parse_apache`, sooner for the usual line: one whose fields hold no space and no
    escape, and whose request line is `METHOD TARGET HTTP/x.y`; any other goes to it."""
    match = _PLAIN.fullmatch(line)
    if match is None:
        return parse_apache(line)
    client, user, stamp, method, target, status = match.groups()
    try:
        moment = apache_time(stamp)
    except (ValueError, KeyError):
        return None
    return Logged(moment, client, None if user == "-" else user, method, target, int(status))


def parse_json(line: str) -> Logged | None:
    """A line of regproxy's `json` format."""
    try:
        record = json.loads(line)
        moment = datetime.fromisoformat(record["time"]).timestamp()
        values = (record["client"], record["user"], record["method"], record["path"])
        status = record["status"]
    except (ValueError, KeyError, TypeError):
        return None
    if not all(isinstance(v, str) for v in values) or type(status) is not int:
        return None
    client, user, method, path = (unescape(v) for v in values)
    return Logged(moment, client, _user(user), method, path, status)


def parse_line(line: str) -> Logged | None:
    """One line of any format read here (told apart by its first character), or None."""
    line = line.rstrip("\r\n")
    if line.startswith("{"):
        return parse_json(line)
    return parse_common(line)


def open_binary(path: Path | str, stdin: io.BufferedReader | None = None) -> io.BufferedIOBase:
    """The log's bytes, gunzipped when it starts with gzip's magic bytes (whatever its name);
    `-` is `stdin`. OSError when it cannot be read."""
    if str(path) == "-" and stdin is not None:
        return gzip.GzipFile(fileobj=stdin) if stdin.peek(2)[:2] == GZIP_MAGIC else stdin
    return gzip.GzipFile(path) if is_gzip(path) else open(path, "rb")


def is_gzip(path: Path | str) -> bool:
    with open(path, "rb") as start:
        return start.read(2) == GZIP_MAGIC


def read_lines(
    binary: io.BufferedIOBase, size: int | None = None, chunk: int = CHUNK
) -> Iterator[str]:
    """The lines of `binary` as `open_log` reads them, without their newline, up to `size`
    bytes (a whole number of lines). A chunk at a time, split at once: cheaper per line."""
    pending: list[bytes] = []  # the start of a line, in chunks: joined once it ends
    left = math.inf if size is None else size
    while left > 0:
        read = binary.read1(int(min(chunk, left)))  # what there is: up to a cut gzip end
        if not read:
            break
        left -= len(read)
        cut = read.rfind(b"\n") + 1
        if not cut:  # a line longer than a chunk
            pending.append(read)
            continue
        # Cut after a newline, which no UTF-8 sequence holds: decoded as the whole would be.
        text = b"".join((*pending, read[:cut])).decode("utf-8", "surrogateescape")
        pending = [read[cut:]]
        lines = text.split("\n")
        lines.pop()  # after the last newline: nothing
        yield from lines
    rest = b"".join(pending)
    if rest:
        yield rest.decode("utf-8", "surrogateescape")


def pieces(path: Path | str, most: int, smallest: int) -> list[tuple[int, int]]:
    """Byte ranges (start, size) of a plain file, each whole lines: up to `most`, of about
    `smallest` bytes or more."""
    with open(path, "rb") as log:
        total = log.seek(0, io.SEEK_END)
        count = max(1, min(most, total // smallest))
        starts = {0}
        for n in range(1, count):
            if total * n // count == 0:
                continue
            log.seek(total * n // count - 1)
            log.readline()  # to the start of the next line (this one if it starts here)
            starts.add(log.tell())
    edges = [*sorted(start for start in starts if start < total), total]
    return [(start, end - start) for start, end in itertools.pairwise(edges)]


def open_log(path: Path | str, stdin: io.BufferedReader | None = None) -> io.TextIOWrapper:
    """The log's lines as text, gunzipped as `open_binary` does."""
    binary = cast(BinaryIO, open_binary(path, stdin))  # a BufferedReader or a GzipFile
    return io.TextIOWrapper(binary, encoding="utf-8", errors="surrogateescape", newline="\n")
