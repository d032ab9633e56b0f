"""Files that are a YAML list of entries (robots, grants): read entry by entry, and edited as
text, every line an edit does not touch kept. Pure."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import yaml

from .problems import ConfigError, Problem, compose_yaml, construct


def empty_document(node: yaml.Node | None) -> bool:
    """An empty file, or one holding only comments or `null`."""
    return node is None or (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"))


def appendable(text: str, source: str) -> bool:
    """Whether a new entry can be appended as text: an empty file or a block list."""
    node = compose_yaml(text, source)
    if empty_document(node):
        return True
    return isinstance(node, yaml.SequenceNode) and not node.flow_style


def appended(text: str, entry: str, header: str) -> str:
    """`text` with `entry` (a block list item) at its end; an empty file starts with `header`."""
    if not text:
        return header + entry
    return (text if text.endswith("\n") else text + "\n") + entry


def entry_spans(text: str, source: str, key: str, values: Collection[str]) -> list[range]:
    """The lines (0-based) of each entry whose `key` is one of `values`, usable or not."""
    node = compose_yaml(text, source)
    if not isinstance(node, yaml.SequenceNode):
        return []
    return [
        range(item.start_mark.line, _end_line(item))
        for item in node.value
        if isinstance(item, yaml.MappingNode)
        and any(
            k.value == key and isinstance(v, yaml.ScalarNode) and v.value in values
            for k, v in item.value
        )
    ]


def without_entries(text: str, source: str, key: str, values: Collection[str]) -> str | None:
    """The text without the entries whose `key` is one of `values`; None when there is none."""
    spans = entry_spans(text, source, key, values)
    if not spans:
        return None
    drop = {n for span in spans for n in span}
    return "".join(line for n, line in enumerate(text.splitlines(keepends=True)) if n not in drop)


def _end_line(item: yaml.Node) -> int:
    """The line after an entry (a block mapping's end mark is at the next entry's line)."""
    end = item.end_mark
    return end.line + 1 if end.column > 0 else end.line


@dataclass(frozen=True)
class EntryFormat:
    """What the entries of one kind of list file hold, and how each is checked."""

    kind: str  # "robot", "grant": how problems name an entry
    keys: tuple[str, ...]  # in the order the CLI writes them
    required: tuple[str, ...]
    name_key: str  # names an entry: a repeated name disables the later entry
    field: Callable[[str, Any], Any]  # checks and converts one value (ValueError says why)
    whole: Callable[[dict[str, Any]], None] = lambda values: None  # checks them together


def read_entries(
    text: str, source: str, form: EntryFormat
) -> tuple[list[tuple[int, dict[str, Any]]], list[Problem]]:
    """The usable entries, each with its line, and a problem for each entry skipped;
    ConfigError when the file is not a YAML list at all."""
    node = compose_yaml(text, source)
    if empty_document(node):
        return [], []
    assert node is not None
    if not isinstance(node, yaml.SequenceNode):
        line = node.start_mark.line + 1
        raise ConfigError([Problem(source, line, f"{form.kind}s: expected a list of {form.kind}s")])
    entries: list[tuple[int, dict[str, Any]]] = []
    named: dict[str, int] = {}
    problems: list[Problem] = []
    for item in node.value:
        line = item.start_mark.line + 1
        try:
            values = _entry(item, form)
        except _Bad as exc:
            problems.append(Problem(source, exc.line, f"{form.kind} disabled: {exc.message}"))
            continue
        name = str(values[form.name_key])
        if name in named:
            message = f"{form.kind} {name!r} repeated ({source}:{named[name]} wins)"
            problems.append(Problem(source, line, message))
            continue
        named[name] = line
        entries.append((line, values))
    return entries, problems


@dataclass
class _Bad(Exception):
    line: int
    message: str


def _entry(node: yaml.Node, form: EntryFormat) -> dict[str, Any]:
    """One entry's values; _Bad at the line of its first problem."""
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.MappingNode):
        raise _Bad(line, f"expected a mapping ({', '.join(form.required[:3])}, ...)")
    values: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key, key_line = str(key_node.value), key_node.start_mark.line + 1
        if key not in form.keys:
            raise _Bad(key_line, f"unknown key {key!r} (known: {', '.join(form.keys)})")
        if key in values:
            raise _Bad(key_line, f"duplicate key {key!r}")
        try:
            values[key] = form.field(key, construct(value_node))
        except ValueError as exc:
            raise _Bad(key_line, str(exc)) from None
    missing = [k for k in form.required if k not in values]
    if missing:
        raise _Bad(line, f"missing {', '.join(missing)}")
    try:
        form.whole(values)
    except ValueError as exc:
        raise _Bad(line, str(exc)) from None
    return values
