"""The ACL file: YAML -> ordered policy Rules, every problem reported as `file:line`. Pure.

    acl:
      - users: [alice]              # any of: users, groups, anonymous, networks, repositories,
        repositories: ["${user}/**"]  # claims (of a workload token: {ref: "refs/tags/v*"})
        actions: [pull, push]       # pull, push, delete, or "*"; [] denies explicitly
        upstream: http://10.0.0.5:5000   # optional: where matching requests go

A list with no rules is refused (it would deny everything: probably a mistake), and so is a
rule that can never match because a catch-all rule above it matches first.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import yaml

from .addresses import IPNetwork, parse_networks, parse_upstream
from .claims import CLAIM_NAME_RE, Conditions
from .policy import PLACEHOLDER_RE, Rule
from .problems import ConfigError, Problem, compose_yaml, construct
from .routes import ACTIONS, Action

_GLOB_RE = re.compile(r"(?:[a-z0-9._/*?-]|\$\{user\}|\$\{group\})+")
# Names from tokens have colons ("ci:acme/app"); AD groups have spaces ("Domain Users").
_NAME_RE = re.compile(r"[^\s:]\S*")
_GROUP_RE = re.compile(r"[^\s:](?:[^\n]*\S)?")
_KEYS = frozenset(
    {"users", "groups", "repositories", "networks", "anonymous", "actions", "upstream",
     "description", "claims"}
)  # fmt: skip


class _Bad(ValueError):
    """One problem in one rule; the caller adds file and line."""


def _value(node: yaml.Node, key: str) -> Any:
    try:
        return construct(node)
    except ValueError as exc:
        raise _Bad(f"{key}: {exc}") from None


def _strings(value: Any, key: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise _Bad(f"{key}: expected a name or a list of names, got {value!r}")
    return items


def _names(value: Any, key: str) -> frozenset[str]:
    names = _strings(value, key)
    pattern = _GROUP_RE if key == "groups" else _NAME_RE
    for name in names:
        if not pattern.fullmatch(name):
            raise _Bad(f"{key}: invalid name {name!r}")
    return frozenset(names)


def glob_problem(glob: str) -> str | None:
    """What is wrong with a repository glob, or None."""
    if "${" in PLACEHOLDER_RE.sub("", glob):
        return f"unknown placeholder in {glob!r} (use ${{user}} or ${{group}})"
    if not _GLOB_RE.fullmatch(glob) or "//" in glob or glob.startswith("/"):
        return (
            f"bad glob {glob!r}: repository names are lowercase letters, digits,"
            " '._-' and '/'; wildcards are *, ** and ?"
        )
    return None


def _globs(value: Any, key: str) -> tuple[str, ...]:
    globs = _strings(value, key)
    for glob in globs:
        problem = glob_problem(glob)
        if problem:
            raise _Bad(f"{key}: {problem}")
    return tuple(globs)


def _networks(value: Any, key: str) -> tuple[IPNetwork, ...]:
    try:
        return parse_networks(value)
    except ValueError as exc:
        raise _Bad(f"{key}: {exc}") from None


def _actions(value: Any, key: str) -> frozenset[Action]:
    if value == "*" or value == ["*"]:
        return frozenset(ACTIONS)
    if not isinstance(value, list):
        raise _Bad(f"{key}: expected a list of pull, push, delete, or '*', got {value!r}")
    unknown = [a for a in value if a not in ACTIONS]
    if unknown:
        raise _Bad(f"{key}: unknown action(s) {unknown!r}: use pull, push, delete or '*'")
    return frozenset(value)


def _boolean(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"{key}: expected true or false, got {value!r}")
    return value


def _upstream(value: Any, key: str) -> str:
    try:
        return parse_upstream(value)
    except ValueError as exc:
        raise _Bad(f"{key}: {exc}") from None


def _description(value: Any, key: str) -> str:
    return str(value)


def claim_conditions(value: Any, key: str) -> Conditions:
    """`{claim: glob}` or `{claim: [glob, ...]}` (any of them); a ValueError names the bad one.
    YAML's `true` and `42` stand for the texts `true` and `42`, as claims are read."""
    if not isinstance(value, dict) or not value:
        raise _Bad(f"{key}: expected a mapping of claim names to globs, got {value!r}")
    conditions = []
    for name, globs in value.items():
        if not isinstance(name, str) or not CLAIM_NAME_RE.fullmatch(name):
            raise _Bad(f"{key}: invalid claim name {name!r}")
        items = globs if isinstance(globs, list) else [globs]
        texts = [_glob_text(g) for g in items]
        if not texts or None in texts:
            raise _Bad(f"{key}: {name}: expected a glob or a list of globs, got {globs!r}")
        conditions.append((name, tuple(t for t in texts if t is not None)))
    return tuple(conditions)


def _glob_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value and value.isprintable():
        return value
    return None


_FIELDS: dict[str, Callable[[Any, str], Any]] = {
    "users": _names,
    "groups": _names,
    "repositories": _globs,
    "networks": _networks,
    "anonymous": _boolean,
    "actions": _actions,
    "upstream": _upstream,
    "description": _description,
    "claims": claim_conditions,
}


def _rule(node: yaml.Node, source: str, problems: list[Problem]) -> Rule | None:
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.MappingNode):
        problems.append(Problem(source, line, "ACL entry: expected a mapping of match keys"))
        return None
    fields: dict[str, Any] = {}
    ok = True
    for key_node, value_node in node.value:
        key, key_line = str(key_node.value), key_node.start_mark.line + 1
        if key in fields:
            problems.append(Problem(source, key_line, f"duplicate ACL key {key!r}"))
            ok = False
            continue
        if key not in _KEYS:
            problems.append(Problem(source, key_line, f"unknown ACL key {key!r}"))
            ok = False
            continue
        try:
            fields[key] = _FIELDS[key](_value(value_node, key), key)
        except _Bad as exc:
            problems.append(Problem(source, key_line, str(exc)))
            ok = False
    if "actions" not in fields and ok:
        problems.append(Problem(source, line, "ACL entry without 'actions'"))
        return None
    anonymous = fields.get("anonymous", False)
    if ok and anonymous and (fields.get("users") or fields.get("groups") or fields.get("claims")):
        problems.append(
            Problem(source, line, "anonymous entries cannot name users, groups or claims")
        )
        return None
    if ok and anonymous and any("${" in g for g in fields.get("repositories", ())):
        problems.append(Problem(source, line, "anonymous entries have no ${user} or ${group}"))
        return None
    return Rule(origin=f"{source}:{line}", **fields) if ok else None


def parse_rules(node: yaml.Node, source: str) -> tuple[tuple[Rule, ...], list[Problem]]:
    """An ACL YAML sequence node -> rules in order, and every problem found."""
    problems: list[Problem] = []
    if not isinstance(node, yaml.SequenceNode):
        line = node.start_mark.line + 1
        return (), [Problem(source, line, "acl: expected a list of rules or a file name")]
    if not node.value:
        line = node.start_mark.line + 1
        return (), [Problem(source, line, "acl: empty ACL denies everything (probably a mistake)")]
    rules = [r for r in (_rule(n, source, problems) for n in node.value) if r is not None]
    problems.extend(_unreachable(rules))
    return tuple(rules), problems


def _unreachable(rules: list[Rule]) -> list[Problem]:
    """Rules after a catch-all of the same kind (valid users, or anonymous) never match."""
    problems: list[Problem] = []
    catch_all: dict[bool, Rule] = {}
    for rule in rules:
        earlier = catch_all.get(rule.anonymous)
        if earlier is not None:
            source, _, line = rule.origin.rpartition(":")
            problems.append(
                Problem(source, int(line), f"unreachable: rule {earlier.origin} matches first")
            )
        elif rule.catch_all:
            catch_all[rule.anonymous] = rule
    return problems


def parse_acl_text(text: str, source: str) -> tuple[tuple[Rule, ...], list[Problem]]:
    """An ACL file: either a list of rules, or a mapping with the list under `acl:`."""
    try:
        node = compose_yaml(text, source)
    except ConfigError as exc:
        return (), exc.problems
    if node is None:
        return (), [Problem(source, 0, "acl: empty ACL file denies everything")]
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == "acl":
                return parse_rules(value_node, source)
        return (), [Problem(source, node.start_mark.line + 1, "no 'acl:' list in this file")]
    return parse_rules(node, source)
