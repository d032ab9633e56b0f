"""What the tests need of PromQL: the metric names an expression reads, and whether a name is
one a `/metrics` exposition exports. Pure functions of text."""

from __future__ import annotations

import re

# Aggregations, binary operators, modifiers: words that are never a metric name there.
KEYWORDS = frozenset(
    (
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "and", "or", "unless", "bool", "offset", "by", "without",
        "on", "ignoring", "group_left", "group_right", "atan2", "inf", "nan",
    )
)  # fmt: skip
# Words followed by a parenthesised list of label names.
LABEL_LISTS = frozenset(("by", "without", "on", "ignoring", "group_left", "group_right"))
TOKEN = re.compile(
    r"""(?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)"""
    r"|(?P<number>0x[0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:[smhdwy]|ms)*)"
    r"|(?P<word>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r"|(?P<space>\s+)"
    r"|(?P<other>.)",
    re.S,
)
NAME_MATCHER = re.compile(r"""__name__\s*=\s*(?:"([^"]*)"|'([^']*)')""")


def tokens(expression: str) -> list[tuple[str, str]]:
    """(kind, text) of each token, spaces dropped."""
    found = [(m.lastgroup or "", m.group()) for m in TOKEN.finditer(expression)]
    return [(kind, text) for kind, text in found if kind != "space"]


def metric_names(expression: str) -> set[str]:
    """The metric names an expression selects (`name{...}` or `{__name__="name"}`)."""
    names = {a or b for a, b in NAME_MATCHER.findall(expression)}
    found = tokens(expression)
    depth = {"{": 0, "[": 0}  # inside label matchers or a range: no metric names there
    skip_list = False  # the next "(" opens a list of label names
    in_list = False
    for index, (kind, text) in enumerate(found):
        following = found[index + 1][1] if index + 1 < len(found) else ""
        if text in ("{", "["):
            depth[text] += 1
        elif text in ("}", "]"):
            depth["{" if text == "}" else "["] -= 1
        elif in_list:
            in_list = text != ")"
        elif text == "(" and skip_list:
            in_list, skip_list = True, False
        elif kind == "word" and not any(depth.values()):
            skip_list = text in LABEL_LISTS
            if text not in KEYWORDS and following != "(":  # not a function call
                names.add(text)
    return names


def exported_names(exposition: str) -> dict[str, str]:
    """Each family a `/metrics` text declares (`# TYPE name kind`), with its kind."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.M))


def is_exported(name: str, families: dict[str, str]) -> bool:
    """Whether a series name belongs to an exported family: the family itself (a counter's
    TYPE line already ends in `_total`; a histogram has no series of its bare name), or a
    histogram's `_bucket`, `_sum`, `_count`, a summary's `_sum`, `_count`."""
    if name in families:
        return families[name] != "histogram"
    base, _, suffix = name.rpartition("_")
    if families.get(base) == "histogram":
        return suffix in ("bucket", "sum", "count")
    return families.get(base) == "summary" and suffix in ("sum", "count")
