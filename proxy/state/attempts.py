"""Login attempts under way, as every process sharing a store counts them: what keeps a burst
of guesses for one user, spread over workers and replicas and sent all at once, from getting
more than `throttle.attempts` of them checked. Pure: the set of one key, as text.

An attempt is counted before its password is checked and let go of when the check is done
(after its failure, if it failed, has been published: whoever counts after that finds the
failure instead). Each stays counted at most until its expiry, so a process that dies with
attempts under way holds nobody up for longer. `LocalStore` keeps a key's set in a file the
workers of a machine lock in turn; `RedisStore` in a sorted set that one script updates.
"""

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
