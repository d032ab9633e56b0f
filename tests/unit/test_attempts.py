"""The set of login attempts under way for one key, as text, by a table: counted once each,
let go of, and forgotten once past their time."""

from __future__ import annotations

from proxy.state.attempts import counted, let_go

NOW = 1000.0


def test_each_attempt_counts_once_until_it_lets_go_or_its_time_is_up() -> None:
    text, count = counted("", b"\x01", NOW, 60)
    assert count == 1
    text, count = counted(text, b"\x02", NOW + 1, 60)
    assert count == 2
    text, count = counted(text, b"\x01", NOW + 2, 60)  # the same attempt again: still one
    assert count == 2
    text, _ = let_go(text, b"\x01", NOW + 3)
    assert counted(text, b"\x03", NOW + 4, 60)[1] == 2
    assert counted(text, b"\x03", NOW + 62, 60)[1] == 1  # \x02's time is up
    assert let_go(text, b"\x02", NOW + 5) == ("", None)  # nothing under way: nothing kept


def test_a_line_cut_short_is_not_an_attempt() -> None:
    text = f"{NOW + 60!r} 01\n{NOW + 60!r}"  # a writer died in the middle of the second
    assert counted(text, b"\x02", NOW, 60)[1] == 2
