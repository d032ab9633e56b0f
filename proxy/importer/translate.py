"""`regproxy import`: an Apache httpd.conf or nginx config written like the recipes -> YAML and
notes (`file:line: directive — why`); a policy it cannot express denies rather than allows.
Pure."""

# regproxy decides per action, not per method: pull is GET/HEAD, push is POST/PUT/PATCH (and
# an upload's GET/DELETE), delete is DELETE; when one action's methods differ, the stricter
# applies.

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from functools import reduce

import yaml

from ..http.routes import ACTIONS, Action
from .apache import ApacheWalk, apache_tree
from .base import ANYONE, METHODS, NOBODY, Entry, Grant, Note, Out, error, printable
from .nginx import NginxWalk, nginx_tree

_ACTION_METHODS: dict[Action, tuple[str, ...]] = {
    "pull": ("GET", "HEAD"),
    "push": ("POST", "PUT", "PATCH"),
    "delete": ("DELETE",),
}


@dataclass(frozen=True)
class Imported:
    """The YAML to write, and what could not be translated (for standard error)."""

    yaml_text: str
    notes: tuple[Note, ...]


def _per_method(entries: list[Entry]) -> dict[str, Grant]:
    """No rule for a method lets anyone use it; an address rule denies it; else any suffices."""
    result = {}
    for method in METHODS:
        covering = [(grant, blocked) for methods, grant, blocked in entries if method in methods]
        blocked = any(b for _, b in covering)
        grants = [g for g, _ in covering] or [ANYONE]
        result[method] = NOBODY if blocked else reduce(lambda a, b: a | b, grants)
    return result


def _actions(actions: set[Action] | frozenset[Action]) -> object:
    return "*" if set(actions) == set(ACTIONS) else [a for a in ACTIONS if a in actions]


def _rules(grants: dict[Action, Grant], out: Out) -> list[dict[str, object]]:
    """First match wins, so the rules with more actions come first; two named rules with
    unrelated action sets cannot add up for a user who matches both: that is a note."""
    anonymous = {a for a, g in grants.items() if g.anyone}
    valid = {a for a, g in grants.items() if g.any_valid}
    named: dict[tuple[str, str], set[Action]] = {}
    for action, grant in grants.items():
        for kind, grantees in (("users", grant.users), ("groups", grant.groups)):
            for name in grantees:
                named.setdefault((kind, name), set(valid)).add(action)
    merged: dict[tuple[str, frozenset[Action]], list[str]] = {}
    for (kind, name), granted in sorted(named.items()):
        if granted != valid:
            merged.setdefault((kind, frozenset(granted)), []).append(name)
    ordered = sorted(merged.items(), key=lambda i: (-len(i[0][1]), i[0][0], sorted(i[0][1])))
    for n, ((kind, actions), names) in enumerate(ordered):
        for (other_kind, other), other_names in ordered[n + 1 :]:
            if not other <= actions and "groups" in (kind, other_kind):
                out.note(
                    out.policy_line,
                    f"a user matching both {kind} {names} and "
                    f"{other_kind} {other_names} gets only {sorted(actions)}: regproxy "
                    "rules do not add up",
                    translated=True,
                )
    rules: list[dict[str, object]] = []
    if anonymous:
        rules.append({"anonymous": True, "actions": _actions(anonymous)})
    rules += [{kind: names, "actions": _actions(actions)} for (kind, actions), names in ordered]
    return [*rules, {"actions": _actions(valid)}] if valid else rules or [{"actions": []}]


_WRITES: tuple[Action, ...] = ("push", "delete")


def _policy(out: Out) -> None:
    """Per-method grants -> `push_group` when it is the recipe's shape, else an inline acl."""
    per_method = _per_method(out.entries)
    grants: dict[Action, Grant] = {}
    for action, methods in _ACTION_METHODS.items():
        found = [per_method[m] for m in methods]
        if len(set(found)) > 1:
            out.note(
                out.policy_line,
                f"{'/'.join(methods)} are not treated alike: regproxy "
                f"decides per action ({action}) and the stricter applies",
                translated=True,
            )
        grants[action] = reduce(lambda a, b: a & b, found)
    opened = [a for a in _WRITES if grants[a].anyone]
    if opened:
        out.note(
            out.policy_line,
            f"{' and '.join(opened)} need no credentials in the source; "
            "regproxy never lets anonymous clients write: any valid user may",
            translated=True,
        )
        grants.update({a: replace(grants[a], anyone=False, valid=True) for a in opened})
    if writers := [a for a in _WRITES if grants[a].valid and a not in opened]:
        out.note(
            out.policy_line,
            f"any valid user may {' and '.join(writers)}: no group or "
            "user list restricts it in the source",
            translated=True,
        )
    rules = _rules(grants, out)
    if out.deny_all:
        out.note(
            out.policy_line,
            "the access policy cannot be expressed: the acl denies "
            "everything until you write rules like conf/acl/*.yaml",
        )
        rules = [{"actions": []}]
    groups = rules[0].get("groups")
    recipe = rules == [{"groups": groups, "actions": "*"}, {"actions": ["pull"]}]
    if recipe and isinstance(groups, list) and len(groups) == 1:
        out.values["push_group"] = groups[0]
        rules = []
    out.acl = rules
    uses_groups = any("groups" in r for r in rules) or "push_group" in out.values
    if uses_groups and "groups" not in out.values:
        out.note(
            out.policy_line,
            "groups are used but no group file is named: regproxy "
            "reads the `groups` file (default conf/groups)",
            translated=True,
        )


_ORDER = ("listen", "upstream", "htpasswd", "groups", "push_group", "realm")
_PLAIN = re.compile(r"[A-Za-z0-9_./$]([A-Za-z0-9_./:@+$ -]*[A-Za-z0-9_./@+$-])?")


def _scalar(value: str) -> str:
    """Plain when YAML reads it back as the same string, in a mapping and in a flow list."""
    if _PLAIN.fullmatch(value):
        try:
            if yaml.safe_load(f"a: {value}\nb: [{value}]") == {"a": value, "b": [value]}:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value)  # ASCII-escaped JSON is a valid YAML double-quoted scalar


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(str(v)) for v in value) + "]"
    return _scalar(str(value))


def _render(out: Out, notes: list[Note]) -> str:
    values = out.values
    lines = [
        f"# Imported from {printable(out.source)} by `regproxy import`. Review it first;",
        "# keys left out keep their defaults (see conf/regproxy.reference.yaml).",
    ]
    lines += [f"{key}: {_scalar(values[key])}" for key in _ORDER if key in values]
    tls = [
        f"  {sub}: {_scalar(values['tls.' + sub])}"
        for sub in ("cert", "key")
        if "tls." + sub in values
    ]
    lines += ["tls:", *tls] if tls else []
    lines += ["acl:"] if out.acl else []
    for rule in out.acl:
        for n, (key, value) in enumerate(rule.items()):
            lines.append(f"{'  - ' if n == 0 else '    '}{key}: {_value(value)}")
    for translated, title in ((True, "Translated, with a difference"), (False, "Not translated")):
        kept = [f"#   {printable(str(note))}" for note in notes if note.translated is translated]
        lines += ["", f"# {title} (also reported on standard error):", *kept] if kept else []
    return "\n".join(lines) + "\n"


_APACHE_HINT = re.compile(
    r"^[ \t]*(?:</?(?:virtualhost|location|limit|limitexcept|ifmodule|directory)\b|(?:listen|"
    r"loadmodule|proxypass|authuserfile|authgroupfile|authname|sslcertificatefile|serverroot|"
    r"require)[ \t][^;{}\n]*$)",
    re.I | re.M,
)
_NGINX_HINT = re.compile(r"^[ \t]*(?:[a-z_]+\b[^#\n]*)?[;{}][ \t]*(?:#.*)?$", re.M)
_BINARY = re.compile(r"[\x00-\x08\x0e-\x1f\ufffd]")


def _kind(text: str, source: str) -> str:
    """Apache or nginx, by which one's line shapes dominate; refuse binary, empty, neither."""
    if bad := _BINARY.search(text):
        raise error(source, text.count("\n", 0, bad.start()) + 1, "binary data, not a config")
    if all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
        raise error(source, 0, "empty: no directives to import")
    apache, nginx = len(_APACHE_HINT.findall(text)), len(_NGINX_HINT.findall(text))
    if apache == nginx:
        raise error(source, 0, "neither an Apache httpd.conf nor an nginx configuration")
    return "apache" if apache > nginx else "nginx"


def import_config(text: str, source: str) -> Imported:
    """Translate an httpd.conf or nginx config; `source` names it in notes and errors."""
    out = Out(source)
    if _kind(text, source) == "apache":
        ApacheWalk(out).run(apache_tree(text, source))
    else:
        NginxWalk(out).run(nginx_tree(text, source))
    if "upstream" not in out.values:
        out.note(0, "no proxy target for /v2 found: upstream keeps its default")
    if "tls.cert" not in out.values or "tls.key" not in out.values:
        out.note(0, "no certificate or key found: regproxy always serves TLS (tls.cert/tls.key)")
    _policy(out)
    notes = sorted(out.notes, key=lambda p: p.line)
    return Imported(_render(out, notes), tuple(notes))
