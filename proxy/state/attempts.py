"""Login attempts under way for one key, as text: a burst of guesses spread over workers and
replicas gets no more than `throttle.attempts` checked. Pure."""

# An attempt is counted before its password is checked and let go of once its failure (if
# any) is published; each expires, so a process that dies holds nobody up for longer.

from __future__ import annotations


def _entries(text: str, now: float) -> dict[str, float]:
    """The set's attempts (hex) and their expiries, those past `now` dropped."""
    entries = {}
    for line in text.splitlines():
        expiry, _, attempt = line.partition(" ")
        try:
            until = float(expiry)
        except ValueError:
            continue  # a line cut short by a process that died writing: not an attempt
        if until > now and attempt:
            entries[attempt] = until
    return entries


def _text(entries: dict[str, float]) -> str:
    return "".join(f"{until!r} {attempt}\n" for attempt, until in entries.items())


def counted(text: str, attempt: bytes, now: float, hold: float) -> tuple[str, int]:
    """The set with `attempt` counted until `now + hold` (once, however often it is sent),
    and how many attempts are under way in it."""
    entries = _entries(text, now)
    entries[attempt.hex()] = now + hold
    return _text(entries), len(entries)


def let_go(text: str, attempt: bytes, now: float) -> tuple[str, None]:
    """The set without `attempt` (empty text: nothing is under way)."""
    entries = _entries(text, now)
    entries.pop(attempt.hex(), None)
    return _text(entries), None
