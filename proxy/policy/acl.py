"""The ACL file: YAML -> ordered policy Rules, every problem reported as `file:line`. Pure."""

#   acl:
#     - users: [alice]              # any of: users, groups, anonymous, networks, repositories,
#       repositories: ["${user}/**"]  # claims (of a workload token: {ref: "refs/tags/v*"}),
#                                   # issuer (whose tokens' claims: required with several)
#       tags: ["v*"]                # optional: then only manifest requests by tag match
#       actions: [pull, push]       # pull, push, delete, or "*"; [] denies explicitly
#       upstream: http://10.0.0.5:5000   # optional: where matching requests go
#   immutable_tags: [...]           # optional, see proxy.policy.tagrules
#   protected_deletes: [...]
#
# Refused as probably a mistake: a list with no rules (it denies everything), a rule a
# catch-all above it always pre-empts, a tag pattern an earlier rule always pre-empts.

from __future__ import annotations

import bisect
import functools
import heapq
import ipaddress
import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import yaml

from ..core.addresses import IPNetwork, parse_networks, parse_upstream
from ..core.problems import BadValue, ConfigError, Problem, compose_yaml, construct, release
from ..core.values import boolean, keyed, strings
from ..http.routes import ACTIONS, Action
from .claims import CLAIM_NAME_RE, Conditions
from .rules import ANY, PLACEHOLDER_RE, Rule, first_components, positions
from .tagrules import TagRule, TagRuleKind

_GLOB_RE = re.compile(r"(?:[a-z0-9._/*?-]|\$\{user\}|\$\{group\})+")
_TAG_GLOB_RE = re.compile(r"(?:[A-Za-z0-9._*?-]|\$\{user\}|\$\{group\})+")
# Names from tokens have colons ("ci:acme/app"); AD groups have spaces ("Domain Users").
_NAME_RE = re.compile(r"[^\s:]\S*")
_GROUP_RE = re.compile(r"[^\s:](?:[^\n]*\S)?")
_KEYS = frozenset(
    {"users", "groups", "repositories", "networks", "anonymous", "actions", "upstream",
     "description", "tags", "claims", "issuer"}
)  # fmt: skip
# Sections of an ACL file (or of the config) besides `acl:`, and the kind of rule each holds.
TAG_SECTIONS: dict[str, TagRuleKind] = {
    "immutable_tags": "immutable",
    "protected_deletes": "protected",
}


_value = keyed(construct)
_strings = keyed(strings)
_boolean = keyed(boolean)
_networks = keyed(parse_networks)
_upstream = keyed(parse_upstream)


def _names(value: Any, key: str) -> frozenset[str]:
    names = _strings(value, key)
    pattern = _GROUP_RE if key == "groups" else _NAME_RE
    for name in names:
        if not pattern.fullmatch(name):
            raise BadValue(f"{key}: invalid name {name!r}")
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
            raise BadValue(f"{key}: {problem}")
    return tuple(globs)


def _tag_globs(value: Any, key: str) -> tuple[str, ...]:
    globs = _strings(value, key)
    for glob in globs:
        _known_placeholders(glob, key)
        if not _TAG_GLOB_RE.fullmatch(glob):
            raise BadValue(
                f"{key}: bad tag glob {glob!r}: tags are letters, digits and '._-';"
                " wildcards are * and ?"
            )
    return tuple(globs)


def _known_placeholders(glob: str, key: str) -> None:
    if "${" in PLACEHOLDER_RE.sub("", glob):
        raise BadValue(f"{key}: unknown placeholder in {glob!r} (use ${{user}} or ${{group}})")


def _fixed(parse: Callable[[Any, str], tuple[str, ...]]) -> Callable[[Any, str], Any]:
    """Globs without placeholders: tag rules hold for every caller alike."""

    def parse_fixed(value: Any, key: str) -> tuple[str, ...]:
        globs = parse(value, key)
        for glob in globs:
            if PLACEHOLDER_RE.search(glob):
                raise BadValue(f"{key}: {glob!r}: placeholders are for ACL rules, not here")
        return globs

    return parse_fixed


fixed_globs = _fixed(_globs)  # repository globs that hold for every caller alike


# The eight sets of actions, shared by every rule (not one set and its texts per rule).
_ACTION_SETS: dict[frozenset[str], frozenset[Action]] = {
    frozenset(chosen): frozenset(chosen)
    for chosen in itertools.chain.from_iterable(
        itertools.combinations(ACTIONS, n) for n in range(len(ACTIONS) + 1)
    )
}


def _actions(value: Any, key: str) -> frozenset[Action]:
    if value == "*" or value == ["*"]:
        return _ACTION_SETS[frozenset(ACTIONS)]
    if not isinstance(value, list):
        raise BadValue(f"{key}: expected a list of pull, push, delete, or '*', got {value!r}")
    unknown = [a for a in value if a not in ACTIONS]
    if unknown:
        raise BadValue(f"{key}: unknown action(s) {unknown!r}: use pull, push, delete or '*'")
    return _ACTION_SETS[frozenset(value)]


def _description(value: Any, key: str) -> str:
    return str(value)


def claim_conditions(value: Any, key: str) -> Conditions:
    """`{claim: glob}` or `{claim: [glob, ...]}` (any of them); a ValueError names the bad one.
    YAML's `true` and `42` stand for the texts `true` and `42`, as claims are read."""
    if not isinstance(value, dict) or not value:
        raise BadValue(f"{key}: expected a mapping of claim names to globs, got {value!r}")
    conditions = []
    for name, globs in value.items():
        if not isinstance(name, str) or not CLAIM_NAME_RE.fullmatch(name):
            raise BadValue(f"{key}: invalid claim name {name!r}")
        items = globs if isinstance(globs, list) else [globs]
        texts = [_glob_text(g) for g in items]
        if not texts or None in texts:
            raise BadValue(f"{key}: {name}: expected a glob or a list of globs, got {globs!r}")
        conditions.append((name, tuple(t for t in texts if t is not None)))
    return tuple(conditions)


def _issuers(value: Any, key: str) -> frozenset[str]:
    """The `iss` of the workload-token issuers a rule is for (https:// URLs)."""
    issuers = _strings(value, key)
    for issuer in issuers:
        parts = urlsplit(issuer)
        if parts.scheme != "https" or not parts.hostname or not issuer.isprintable():
            raise BadValue(f"{key}: expected an issuer's https:// URL, got {issuer!r}")
    return frozenset(issuers)


def bind_issuers(
    rules: tuple[Rule, ...], issuers: tuple[str, ...]
) -> tuple[tuple[Rule, ...], list[Problem]]:
    """Each rule's `issuer` checked against the configured issuers, and `claims` rules without
    one bound to the only issuer (with several, a problem: another could mint the claims)."""
    bound: list[Rule] = []
    problems: list[Problem] = []
    for rule in rules:
        unknown = sorted(rule.issuers - set(issuers))
        if unknown:
            problems.append(_problem(rule, f"issuer: {unknown[0]} is not among oidc.issuers"))
        if rule.claims and not rule.issuers and len(issuers) == 1:
            rule = replace(rule, issuers=frozenset(issuers))
        elif rule.claims and not rule.issuers and issuers:
            message = "claims: name the issuer these claims are from (several are configured)"
            problems.append(_problem(rule, message))
        bound.append(rule)
    return tuple(bound), problems


def _glob_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value and value.isprintable():
        return value
    return None


_NAMED = frozenset({"users", "groups", "issuer"})  # sets of names, often the same in many rules
_Shared = dict[frozenset[str], frozenset[str]]  # each set of names once, within one file
_FIELDS: dict[str, Callable[[Any, str], Any]] = {
    "users": _names,
    "groups": _names,
    "repositories": _globs,
    "networks": _networks,
    "anonymous": _boolean,
    "actions": _actions,
    "upstream": _upstream,
    "description": _description,
    "tags": _tag_globs,
    "claims": claim_conditions,
    "issuer": _issuers,
}
_TAG_RULE_FIELDS: dict[TagRuleKind, dict[str, Callable[[Any, str], Any]]] = {
    "immutable": {
        "repositories": fixed_globs,
        "tags": _fixed(_tag_globs),
        "description": _description,
    },
    "protected": {
        "repositories": fixed_globs,
        "tags": _fixed(_tag_globs),
        "allow_by_digest": _boolean,
        "description": _description,
    },
}


def _fields(
    node: yaml.Node,
    source: str,
    problems: list[Problem],
    parsers: Mapping[str, Callable[[Any, str], Any]],
    what: str,
) -> dict[str, Any] | None:
    """One entry's keys, each parsed; None (and every problem recorded) when any is bad."""
    if not isinstance(node, yaml.MappingNode):
        line = node.start_mark.line + 1
        problems.append(Problem(source, line, f"{what} entry: expected a mapping of match keys"))
        return None
    fields: dict[str, Any] = {}
    ok = True
    for key_node, value_node in node.value:
        key = str(key_node.value)
        try:
            if key in fields:
                raise BadValue(f"duplicate {what} key {key!r}")
            if key not in parsers:
                raise BadValue(f"unknown {what} key {key!r}")
            fields[key] = parsers[key](_value(value_node, key), key)
        except BadValue as exc:
            problems.append(Problem(source, key_node.start_mark.line + 1, str(exc)))
            ok = False
    return fields if ok else None


def _rule(node: yaml.Node, source: str, problems: list[Problem], names: _Shared) -> Rule | None:
    line = node.start_mark.line + 1
    fields = _fields(node, source, problems, _FIELDS, "ACL")
    if fields is None:
        return None
    for key in _NAMED.intersection(fields):  # rules for the same group hold one set of it
        fields[key] = names.setdefault(fields[key], fields[key])
    if "actions" not in fields:
        problems.append(Problem(source, line, "ACL entry without 'actions'"))
        return None
    anonymous = fields.get("anonymous", False)
    if anonymous and any(fields.get(k) for k in ("users", "groups", "claims", "issuer")):
        message = "anonymous entries cannot name users, groups, claims or an issuer"
        problems.append(Problem(source, line, message))
        return None
    globs = (*fields.get("repositories", ()), *fields.get("tags", ()))
    if anonymous and any("${" in g for g in globs):
        problems.append(Problem(source, line, "anonymous entries have no ${user} or ${group}"))
        return None
    if "issuer" in fields:
        fields["issuers"] = fields.pop("issuer")
    return Rule(origin=f"{source}:{line}", **fields)


def _tag_rule(
    node: yaml.Node, source: str, problems: list[Problem], section: str
) -> TagRule | None:
    kind = TAG_SECTIONS[section]
    fields = _fields(node, source, problems, _TAG_RULE_FIELDS[kind], section)
    if fields is None:
        return None
    line = node.start_mark.line + 1
    if kind == "immutable" and "tags" not in fields:
        problems.append(Problem(source, line, f"{section} entry without 'tags'"))
        return None
    return TagRule(kind, origin=f"{source}:{line}", **fields)


def parse_tag_rules(
    node: yaml.Node, source: str, section: str
) -> tuple[tuple[TagRule, ...], list[Problem]]:
    """An `immutable_tags:` or `protected_deletes:` list -> rules, and every problem found."""
    if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
        return (), []
    if not isinstance(node, yaml.SequenceNode):
        line = node.start_mark.line + 1
        return (), [Problem(source, line, f"{section}: expected a list of rules")]
    problems: list[Problem] = []
    rules = (_tag_rule(entry, source, problems, section) for entry in node.value)
    return tuple(r for r in rules if r is not None), problems


def parse_rules(node: yaml.Node, source: str) -> tuple[tuple[Rule, ...], list[Problem]]:
    """An ACL YAML sequence node -> rules in order, and every problem found."""
    problems: list[Problem] = []
    if not isinstance(node, yaml.SequenceNode):
        line = node.start_mark.line + 1
        return (), [Problem(source, line, "acl: expected a list of rules or a file name")]
    if not node.value:
        line = node.start_mark.line + 1
        return (), [Problem(source, line, "acl: empty ACL denies everything (probably a mistake)")]
    names: _Shared = {}
    rules = [r for r in (_rule(n, source, problems, names) for n in node.value) if r is not None]
    problems.extend(_unreachable(rules))
    return tuple(rules), problems


def _unreachable(rules: list[Rule]) -> list[Problem]:
    """Rules after a catch-all of the same kind (valid users, or anonymous) never match, nor
    do tag patterns whose every request an earlier rule matches."""
    problems: list[Problem] = []
    catch_all: dict[bool, Rule] = {}
    coverers: _Coverers | None = None  # indexed at the first tag rule: most ACLs have none
    for index, rule in enumerate(rules):
        earlier = catch_all.get(rule.anonymous)
        if earlier is not None:
            problems.append(_problem(rule, f"unreachable: rule {earlier.origin} matches first"))
        elif rule.tags:
            coverers = coverers or _Coverers(rules)
            problems.extend(_dead_tags(rule, coverers.before(index)))
        elif rule.catch_all:
            catch_all[rule.anonymous] = rule
    return problems


_CoverKey = tuple[str, str]


class _Coverers:
    """The earlier rules that could match every request a rule does, found through two
    indexes (as `RuleSet` finds the deciding rule): by the first path component of their
    repositories, and by whom they are for. Either list holds every rule `_covers_requests`
    can accept; the shorter is walked, so checking 10,000 tag rules is not 50 million
    comparisons."""

    def __init__(self, rules: list[Rule]) -> None:
        self._rules = rules
        self._by_name = positions((k, i) for i, r in enumerate(rules) for k in first_components(r))
        self._by_whom = positions((k, i) for i, r in enumerate(rules) for k in self._whom(r))

    @staticmethod
    def _whom(rule: Rule) -> list[_CoverKey]:
        """Who a rule is for, by the narrowest of its keys that a rule covering it shares."""
        if rule.anonymous:
            return [("anonymous", "")]
        for kind, names in (("user", rule.users), ("group", rule.groups),
                            ("issuer", rule.issuers)):  # fmt: skip
            if names:
                return [(kind, name) for name in names]
        return [("everyone", "")]

    def before(self, index: int) -> list[Rule]:
        """The rules before `index` that could cover it, in order."""
        rule = self._rules[index]
        first = (rule.repositories or ("**",))[0].split("/", 1)[0]
        literal = first in ("${user}", "${group}") or not any(c in first for c in "*?$")
        by_name = [self._by_name.get(key, ()) for key in ({first, ANY} if literal else {ANY})]
        # A wider rule names every user (group, issuer) this one does, or none: look one up.
        keys = [("anonymous", "")] if rule.anonymous else [("everyone", "")]
        for kind, names in (("user", rule.users), ("group", rule.groups),
                            ("issuer", rule.issuers)):  # fmt: skip
            if names and not rule.anonymous:
                keys.append((kind, min(names)))
        by_whom = [self._by_whom.get(key, ()) for key in keys]
        lists = min(by_name, by_whom, key=lambda found: sum(map(len, found)))
        cut = [found[: bisect.bisect_left(found, index)] for found in lists]
        return [self._rules[i] for i in heapq.merge(*cut)]


def _problem(rule: Rule, message: str) -> Problem:
    source, _, line = rule.origin.rpartition(":")
    return Problem(source, int(line), message)


def _dead_tags(rule: Rule, earlier: list[Rule]) -> list[Problem]:
    """Tag patterns of `rule` that never decide: an earlier rule matches every request they
    match (or an earlier pattern of the same rule does)."""
    first: dict[str, str] = {}  # pattern -> the rule that matches its requests first
    for prior in earlier:
        if not _covers_requests(prior, rule):
            continue
        if not prior.tags:
            return [_problem(rule, f"unreachable: rule {prior.origin} matches every tag first")]
        for glob in rule.tags:
            if glob not in first and any(glob_covers(p, glob) for p in prior.tags):
                first[glob] = prior.origin
    if len(first) == len(set(rule.tags)):
        origins = ", ".join(sorted(set(first.values())))
        return [_problem(rule, f"unreachable: rule {origins} matches these tags first")]
    problems = [
        _problem(rule, f"tag pattern {glob!r} never matches: rule {origin} matches it first")
        for glob, origin in first.items()
    ]
    for position, glob in enumerate(rule.tags):
        wider = next((g for g in rule.tags[:position] if glob_covers(g, glob)), None)
        if wider is not None and glob not in first:
            problems.append(_problem(rule, f"tag pattern {glob!r} is already matched by {wider!r}"))
    return problems


def _covers_requests(prior: Rule, rule: Rule) -> bool:
    """Whether `prior` matches every request `rule` does, tags aside. Sound, not complete:
    False may only mean "not shown". (A new match key must be compared here too.)"""
    return (
        prior.anonymous == rule.anonymous
        and _within(prior.users, rule.users)
        and _within(prior.groups, rule.groups)
        and (not prior.claims or prior.claims == rule.claims)
        and _within(prior.issuers, rule.issuers)
        and _networks_within(prior.networks, rule.networks)
        and all(
            any(glob_covers(wide, narrow) for wide in prior.repositories or ("**",))
            for narrow in rule.repositories or ("**",)
        )
    )


def _within(wide: frozenset[str], narrow: frozenset[str]) -> bool:
    return not wide or (bool(narrow) and narrow <= wide)


def _networks_within(wide: tuple[IPNetwork, ...], narrow: tuple[IPNetwork, ...]) -> bool:
    return not wide or (bool(narrow) and all(any(_subnet(n, w) for w in wide) for n in narrow))


def _subnet(narrow: IPNetwork, wide: IPNetwork) -> bool:
    if isinstance(narrow, ipaddress.IPv4Network) and isinstance(wide, ipaddress.IPv4Network):
        return narrow.subnet_of(wide)
    if isinstance(narrow, ipaddress.IPv6Network) and isinstance(wide, ipaddress.IPv6Network):
        return narrow.subnet_of(wide)
    return False


_TOKEN_RE = re.compile(r"\$\{(?:user|group)\}|\*\*|\*|\?|.", re.DOTALL)


@functools.lru_cache(maxsize=4096)  # many rules share their globs: the same pairs recur
def glob_covers(wide: str, narrow: str) -> bool:
    """Whether every name `narrow` matches, `wide` matches too. Sound, not complete."""
    # A placeholder is one token that only itself or `**` covers: it may stand for a `/`.
    a, b = _TOKEN_RE.findall(wide), _TOKEN_RE.findall(narrow)
    # row[j]: whether a[i:] covers b[j:], for i from the end of `a` down to 0.
    row = [j == len(b) for j in range(len(b) + 1)]
    for head in reversed(a):
        new = [False] * (len(b) + 1)
        for j in range(len(b), -1, -1):
            if head == "**":
                new[j] = row[j] or (j < len(b) and new[j + 1])
            elif head == "*":
                new[j] = row[j] or (j < len(b) and _in_component(b[j]) and new[j + 1])
            elif j < len(b) and head == "?":
                new[j] = _one_character(b[j]) and row[j + 1]
            elif j < len(b):
                new[j] = head == b[j] and row[j + 1]
        row = new
    return row[0]


def _literal(token: str) -> bool:
    return len(token) == 1 and token not in "*?"


def _one_character(token: str) -> bool:
    return token == "?" or (_literal(token) and token != "/")


def _in_component(token: str) -> bool:
    return token == "*" or _one_character(token)


def parse_acl_text(text: str, source: str) -> tuple[tuple[Rule, ...], list[Problem]]:
    """The ACL rules of a file (see `parse_acl_document`)."""
    rules, _, problems = parse_acl_document(text, source)
    return rules, problems


def parse_acl_document(
    text: str, source: str
) -> tuple[tuple[Rule, ...], tuple[TagRule, ...], list[Problem]]:
    """An ACL file: either a list of rules, or a mapping with the list under `acl:` and,
    optionally, `immutable_tags:` and `protected_deletes:` lists."""
    try:
        node = compose_yaml(text, source)
    except ConfigError as exc:
        return (), (), exc.problems
    if node is None:
        return (), (), [Problem(source, 0, "acl: empty ACL file denies everything")]
    try:
        if not isinstance(node, yaml.MappingNode):
            rules, problems = parse_rules(node, source)
            return rules, (), problems
        return _acl_mapping(node, source)
    finally:
        release(node)


def _acl_mapping(
    node: yaml.MappingNode, source: str
) -> tuple[tuple[Rule, ...], tuple[TagRule, ...], list[Problem]]:
    rules: tuple[Rule, ...] | None = None
    tag_rules: list[TagRule] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for key_node, value_node in node.value:
        key, line = str(key_node.value), key_node.start_mark.line + 1
        if key in seen or (key != "acl" and key not in TAG_SECTIONS):
            word = "duplicate" if key in seen else "unknown"
            problems.append(Problem(source, line, f"{word} key {key!r} in an ACL file"))
        elif key == "acl":
            rules, found = parse_rules(value_node, source)
            problems.extend(found)
        else:
            found_rules, found = parse_tag_rules(value_node, source, key)
            tag_rules.extend(found_rules)
            problems.extend(found)
        seen.add(key)
    if rules is None:
        problems.append(Problem(source, node.start_mark.line + 1, "no 'acl:' list in this file"))
    return rules or (), tuple(tag_rules), problems
