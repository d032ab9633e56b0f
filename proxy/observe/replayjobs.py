"""Logs read into a replay in one process or several: a plain log split into byte ranges of
whole lines, a gzip-compressed one (or standard input) read whole, each piece tallied by its own
process and the tallies merged in the logs' order into the tally one process reading them in
turn makes."""

from __future__ import annotations

import io
import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass

from .logread import is_gzip, open_binary, pieces, read_lines
from .replay import Policy, Replay, Tally

MOST_JOBS = 8
SMALLEST = 1 << 16  # bytes: a piece smaller is not worth a process's start
PER_JOB = 1  # pieces of a log a process: each piece learns its decisions again


def default_jobs() -> int:
    """The CPUs this process may use, at most MOST_JOBS."""
    return max(1, min(len(os.sched_getaffinity(0)), MOST_JOBS))


class Unreadable(Exception):
    """A log that cannot be read to its end; the message names it and the line."""


@dataclass(frozen=True)
class Piece:
    """Bytes `start` to `start + size` of the `log`th log (size None: to its end)."""

    log: int
    name: str
    start: int = 0
    size: int | None = None


@dataclass
class Part:
    """A piece's tally, the lines read, and why it could not be read to its end, if so."""

    tally: Tally
    lines: int
    problem: str | None = None


def plan(names: Sequence[str], jobs: int) -> list[Piece]:
    """The pieces of the logs, in order (OSError: a log cannot be opened)."""
    found: list[Piece] = []
    for log, name in enumerate(names):
        if jobs == 1 or name == "-" or is_gzip(name):
            found.append(Piece(log, name))
        else:
            found += [Piece(log, name, start, size)
                      for start, size in pieces(name, jobs * PER_JOB, SMALLEST)]  # fmt: skip
    return found


def read_piece(replay: Replay, piece: Piece, stdin: io.BufferedReader | None = None) -> str | None:
    """Feed one piece to `replay`; why it cannot be read to its end (the system's words, or
    EARLY), if it cannot."""
    try:
        with open_binary(piece.name, stdin) as binary:
            if piece.start:  # standard input cannot seek
                binary.seek(piece.start)
            replay.source = piece.name
            replay.feed(read_lines(binary, piece.size))
    except OSError as exc:
        return str(exc.strerror or exc)
    except EOFError:  # a gzip stream cut short, a log compressed while being written
        return EARLY
    return None


EARLY = "compressed data ends early"


def _message(name: str, lines: int, problem: str) -> str:
    if problem == EARLY:
        return f"{name}: {EARLY}, after line {lines}"
    where = f" after line {lines}" if lines else ""
    return f"{name}: cannot read{where}: {problem}"


def replay_logs(
    before: Policy, after: Policy, names: Sequence[str], jobs: int,
    stdin: io.BufferedReader | None = None,
) -> Tally:  # fmt: skip
    """The tally of the logs `names`, read by up to `jobs` processes. Unreadable: a log
    cannot be read to its end."""
    try:
        found = plan(names, jobs)
    except OSError as exc:
        raise Unreadable(f"{exc.filename}: cannot read: {exc.strerror or exc}") from None
    if jobs == 1 or len(found) == 1 or "-" in names:
        replay = Replay(before, after)
        for piece in found:
            problem = read_piece(replay, piece, stdin)
            if problem is not None:
                raise Unreadable(_message(piece.name, replay.line, problem))
        return replay
    return _in_processes(before, after, found, jobs)


_SIDES: list[Policy] = []  # the policies, set before the processes fork


def _part(piece: Piece) -> Part:
    replay = Replay(*_SIDES)
    problem = read_piece(replay, piece)
    return Part(replay.tally(), replay.line, problem)


def _in_processes(before: Policy, after: Policy, found: list[Piece], jobs: int) -> Tally:
    _SIDES[:] = [before, after]
    tally = Tally()
    read: dict[int, int] = {}  # lines of each log read so far
    # fork: the policies are inherited, not pickled; each process's memory stays flat.
    with multiprocessing.get_context("fork").Pool(min(jobs, len(found))) as pool:
        for piece, part in zip(found, pool.imap(_part, found), strict=True):
            base = read.get(piece.log, 0)
            if part.problem is not None:
                raise Unreadable(_message(piece.name, base + part.lines, part.problem))
            tally.merge(part.tally, base)
            read[piece.log] = base + part.lines
    return tally
