"""A replay's report, as text for people and as JSON for programs. Pure."""

from __future__ import annotations

from typing import Any

from ..core.moments import timestamp
from .replay import UNDECIDED, Change, Outcome, Sample, Tally

SHOWN = 3  # repositories named one by one in a change


def _with_upstream(change: Change) -> bool:
    return change.before.allowed and change.after.allowed and (
        change.before.upstream != change.after.upstream
    )  # fmt: skip


def _where(sample: Sample) -> str:
    more = ", ..." if sample.count > len(sample.first) else ""
    return f" ({', '.join(sample.first)}{more})" if sample.first else ""


def _repositories(change: Change) -> str:
    """A few names as they are; more as one glob, with how many."""
    if len(change.repositories) <= SHOWN and not change.more:
        return ", ".join(sorted(change.repositories)) or "-"
    more = "+" if change.more else ""
    return f"{change.pattern} ({len(change.repositories)}{more} repositories)"


def _seen(change: Change) -> str:
    first, last = timestamp(change.first_seen), timestamp(change.last_seen)
    return f"at {first}" if first == last else f"{first} to {last}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def summary(replay: Tally) -> str:
    """The last line: what changes, out of how much."""
    undecided = sum(sample.count for sample in replay.undecided.values())
    text = (
        f"replay: {_plural(replay.requests, 'request')}, {replay.decided} decided:"
        f" {replay.changed} would be answered differently"
        f" ({_plural(len(replay.changes), 'change')}); {undecided} not decided"
    )
    if replay.malformed.count:
        text += f"; {_plural(replay.malformed.count, 'malformed line')}"
    return text


def text_lines(replay: Tally) -> list[str]:
    """The report: each change, then what was not decided, then the summary line."""
    lines = []
    for change in replay.sorted_changes():
        upstream = _with_upstream(change)
        lines += [
            f"{change.user or '-'} {change.action} {_repositories(change)}:"
            f" {change.before.words(upstream)} -> {change.after.words(upstream)},"
            f" {_plural(change.count, 'request')}, {_seen(change)}",
            f"  before: {change.before.by}",
            f"  after:  {change.after.by}",
            f"  first:  {change.first_line}",
        ]
    undecided = [(k, s) for k, s in replay.undecided.items() if s.count]
    if undecided:
        lines.append("not decided, what the log cannot tell:")
    for kind, sample in undecided:
        lines.append(f"  {UNDECIDED[kind]}: {sample.count}{_where(sample)}")
        if kind == "unresolved":
            users = sorted(replay.unresolved_users.items(), key=lambda item: -item[1])
            lines.append("    " + ", ".join(f"{user} ({n})" for user, n in users[:10]))
    if replay.malformed.count:
        lines.append(f"malformed lines: {replay.malformed.count}{_where(replay.malformed)}")
    if replay.disagreements.count:
        lines.append(
            f"note: the current policy refuses {_plural(replay.disagreements.count, 'request')}"
            f" the log shows answered{_where(replay.disagreements)}: a log from before the"
            " files changed, or another front end's"
        )
    lines.append(summary(replay))
    return lines


def _outcome(outcome: Outcome) -> dict[str, Any]:
    return {
        "allowed": outcome.allowed,
        "status": outcome.status,
        "upstream": outcome.upstream,
        "mount_dropped": outcome.mount_dropped,
        "known_user": outcome.known,
        "by": outcome.by,
    }


def _sample(sample: Sample) -> dict[str, Any]:
    return {"count": sample.count, "first_lines": sample.first}


def as_json(replay: Tally, logs: list[str]) -> dict[str, Any]:
    """Everything the text says, as one JSON object."""
    seen = (replay.first_seen, replay.last_seen) if replay.requests else (None, None)
    return {
        "logs": logs,
        "requests": replay.requests,
        "decided": replay.decided,
        "changed": replay.changed,
        "first_seen": None if seen[0] is None else timestamp(seen[0]),
        "last_seen": None if seen[1] is None else timestamp(seen[1]),
        "changes": [
            {
                "user": change.user,
                "action": change.action,
                "repositories": change.pattern,
                "repository_names": sorted(change.repositories),
                "before": _outcome(change.before),
                "after": _outcome(change.after),
                "count": change.count,
                "first_seen": timestamp(change.first_seen),
                "last_seen": timestamp(change.last_seen),
                "first_line": change.first_line,
            }
            for change in replay.sorted_changes()
        ],
        "not_decided": {kind: _sample(sample) for kind, sample in replay.undecided.items()},
        "unresolved_users": replay.unresolved_users,
        "malformed": _sample(replay.malformed),
        "refused_now_but_answered_in_log": _sample(replay.disagreements),
        "summary": summary(replay),
    }
