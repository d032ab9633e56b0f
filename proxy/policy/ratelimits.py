"""Rate limits (`rate_limits:`): budgets per identity, per action class and per window, the
section's parser (every problem with its line), and which budget a request spends. Pure.

    rate_limits:
      anonymous:                  # each client address without credentials (IPv6: each /64)
        manifest_pulls: {limit: 100, per: 6h}
      users:                      # each user; robots and workload identities too, unless
        manifest_pulls: {limit: 200, per: 6h}    # `robots:` or `workloads:` name the class
        blob_bytes: {limit: 50GiB, per: 6h}
        pushes: {limit: 500, per: 1h}
      overrides:                  # before the classes: the first that matches and names
        - groups: [ci]            # the request's action class decides
          manifest_pulls: {limit: 5000, per: 6h}
        - users: [release-bot]
          pushes: unlimited

Action classes: `manifest_pulls` (a manifest GET counts 1; a HEAD counts nothing and is never
refused: it shows what is left), `blob_bytes` (a blob GET counts the body bytes sent to the
client, at its end; refused once the budget is spent), `pushes` (a manifest PUT counts 1: one
per image or index pushed; once spent, manifest PUTs and new uploads are refused, uploads
already started may finish).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from ..core.addresses import IPAddress
from ..core.moments import describe_duration, parse_duration
from ..core.problems import Problem, construct
from ..http.routes import Operation
from .identity import Identity

ActionClass = Literal["manifest_pulls", "blob_bytes", "pushes"]
ACTION_CLASSES: tuple[ActionClass, ...] = ("manifest_pulls", "blob_bytes", "pushes")
Kind = Literal["anonymous", "users", "robots", "workloads"]
KINDS: tuple[Kind, ...] = ("anonymous", "users", "robots", "workloads")
MAX_PER = 31 * 86_400  # the longest window: a month
UNLIMITED = "unlimited"
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip
_WORDS = {"manifest_pulls": "manifest pulls", "blob_bytes": "of blobs pulled",
          "pushes": "manifests pushed"}  # fmt: skip


@dataclass(frozen=True)
class Budget:
    """How much of one action class an identity may spend per window: `limit` (None:
    unlimited) per `per` seconds. `name` is whose budget it is in the config (`anonymous`,
    `users`, an override's name) and `origin` its file:line."""

    name: str
    action: ActionClass
    limit: int | None
    per: int
    origin: str = ""

    @property
    def label(self) -> str:
        """The budget's name in metrics: `users/manifest_pulls`."""
        return f"{self.name}/{self.action}"

    def describe(self) -> str:
        if self.limit is None:
            return f"unlimited {_WORDS[self.action]}"
        amount = _size(self.limit) if self.action == "blob_bytes" else str(self.limit)
        return f"{amount} {_WORDS[self.action]} per {describe_duration(self.per)}"


@dataclass(frozen=True)
class Override:
    """Budgets for some users or groups, before their class's."""

    name: str
    users: frozenset[str]
    groups: frozenset[str]
    budgets: Mapping[ActionClass, Budget]

    def matches(self, who: Identity) -> bool:
        return who.user in self.users or bool(self.groups & who.groups)


@dataclass(frozen=True)
class RateLimits:
    """The `rate_limits:` section: each class's budgets, then the overrides, in order."""

    classes: Mapping[Kind, Mapping[ActionClass, Budget]]
    overrides: tuple[Override, ...] = ()

    def labels(self) -> list[str]:
        """Every limited budget's name in metrics."""
        budgets = [b for c in self.classes.values() for b in c.values()]
        budgets += [b for o in self.overrides for b in o.budgets.values()]
        return [b.label for b in budgets if b.limit is not None]


@dataclass(frozen=True)
class Measure:
    """How a request meets its action class: what it counts now (`amount`; bytes are counted
    at its end) and whether it is refused once the budget is spent."""

    action: ActionClass
    amount: int
    refusable: bool


def measure(method: str, operation: Operation) -> Measure | None:
    """The action class a request spends or shows, or None (it has nothing to do with one)."""
    kind = operation.kind
    if kind == "manifest" and method in ("GET", "HEAD"):
        return Measure("manifest_pulls", int(method == "GET"), method == "GET")
    if kind == "blob" and method == "GET":
        return Measure("blob_bytes", 0, True)
    if kind == "manifest" and method == "PUT":
        return Measure("pushes", 1, True)
    if kind == "upload-start":
        return Measure("pushes", 0, True)
    return None


@dataclass(frozen=True)
class Applies:
    """The budget a request spends, and whose count it is (`subject`): `user:NAME`, or for
    anonymous callers `address:ADDRESS` (an IPv6 client's /64)."""

    budget: Budget
    subject: str

    @property
    def key(self) -> str:
        """The count's name: the same for every budget of one subject, action and window, so
        that an override changes the limit, not what was spent."""
        return f"{self.budget.action}/{self.budget.per}/{self.subject}"


def _size(amount: int) -> str:
    """Bytes in the largest binary unit that states them exactly (`100GiB`, `1500B`)."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if amount % size == 0:
            return f"{amount // size}{unit}"
    return f"{amount}B"


# The action classes a request of each ACL action may spend.
CLASSES_OF: Mapping[str, tuple[ActionClass, ...]] = {
    "pull": ("manifest_pulls", "blob_bytes"),
    "push": ("pushes",),
}


def explained(
    limits: RateLimits, who: Identity, address: IPAddress | None, action: str
) -> list[str]:
    """What `regproxy explain` says of the budgets `who` spends on `action`, one line each."""
    whose = subject(who, address) if who.user is not None or address else "each address"
    lines = []
    for action_class in CLASSES_OF.get(action, ()):
        budget = _budget(limits, who, action_class)
        if budget is not None:
            counted = "" if budget.limit is None else f" for {whose}"
            lines.append(f"{budget.describe()}{counted} (budget {budget.label}, {budget.origin})")
    return lines or [f"none for {action}"]


def kind_of(who: Identity) -> Kind:
    if who.user is None:
        return "anonymous"
    if who.robot is not None:
        return "robots"
    return "workloads" if who.issuer is not None else "users"


def budget_for(
    limits: RateLimits, who: Identity, address: IPAddress | None, action: ActionClass
) -> Applies | None:
    """The budget `who` (from `address`) spends on `action`, or None: unlimited."""
    budget = _budget(limits, who, action)
    if budget is None or budget.limit is None:
        return None
    return Applies(budget, subject(who, address))


def _budget(limits: RateLimits, who: Identity, action: ActionClass) -> Budget | None:
    if who.user is not None:
        for override in limits.overrides:
            if action in override.budgets and override.matches(who):
                return override.budgets[action]
    kind = kind_of(who)
    budget = limits.classes.get(kind, {}).get(action)
    if budget is None and kind in ("robots", "workloads"):
        budget = limits.classes.get("users", {}).get(action)
    return budget


def subject(who: Identity, address: IPAddress | None) -> str:
    """Whose count: the identity's name, or without credentials the client's address (an
    IPv6 client usually has a /64 to itself: one budget for all of it)."""
    if who.user is not None:
        return f"user:{who.user}"
    if isinstance(address, ipaddress.IPv6Address):
        return f"address:{ipaddress.IPv6Network((address, 64), strict=False)}"
    return f"address:{address if address is not None else 'unknown'}"


@dataclass(frozen=True)
class Charge:
    """What a request that was let through spends: its budget, the window (when it ends,
    epoch seconds) and what it counted at once."""

    applies: Applies
    expires: int
    amount: int


def headers(budget: Budget, left: int) -> dict[str, str]:
    """Docker Hub's headers (`RateLimit-Limit: 100;w=21600`): the limit and what is left,
    each with the window in seconds."""
    window = f";w={budget.per}"
    return {"RateLimit-Limit": f"{budget.limit}{window}", "RateLimit-Remaining": f"{left}{window}"}


def refusal(applies: Applies, expires: int, now: float) -> tuple[str, dict[str, str]]:
    """The 429's message and headers for a spent budget: retry when its window ends."""
    budget = applies.budget
    wait = max(1, math.ceil(expires - now))
    message = (f"rate limit reached: {budget.describe()} (budget {budget.label}); retry in "
               f"{_words(wait)}")  # fmt: skip
    return message, {"Retry-After": str(wait), **headers(budget, 0)}


def _words(seconds: int) -> str:
    """`2h41m`, `5m3s`, `42s`."""
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


# --- the section's parser -------------------------------------------------------------------


def parse_rate_limits(node: yaml.Node, source: str) -> tuple[RateLimits | None, list[Problem]]:
    """The `rate_limits:` node -> settings, and every problem found (file:line)."""
    problems: list[Problem] = []
    if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
        return None, problems  # `rate_limits:` left empty: off
    if not isinstance(node, yaml.MappingNode):
        return None, [_at(node, source, "rate_limits: expected a mapping (anonymous, users, "
                                        "robots, workloads, overrides)")]  # fmt: skip
    classes: dict[Kind, Mapping[ActionClass, Budget]] = {}
    overrides: tuple[Override, ...] = ()
    for key_node, value_node in node.value:
        key = str(key_node.value)
        if key in KINDS:
            where = f"rate_limits.{key}"
            classes[key] = _budgets(value_node, source, where, key, problems, set())
        elif key == "overrides":
            overrides = _overrides(value_node, source, problems)
        else:
            expected = ", ".join((*KINDS, "overrides"))
            problems.append(_at(key_node, source, f"rate_limits: unknown key {key!r} "
                                                  f"(expected {expected})"))  # fmt: skip
    return RateLimits(classes, overrides), problems


def _at(node: yaml.Node, source: str, message: str) -> Problem:
    return Problem(source, node.start_mark.line + 1, message)


def _budgets(
    node: yaml.Node, source: str, where: str, name: str, problems: list[Problem], other: set[str]
) -> dict[ActionClass, Budget]:
    """A mapping of action class -> budget; keys in `other` are the caller's (skipped)."""
    budgets: dict[ActionClass, Budget] = {}
    if not isinstance(node, yaml.MappingNode):
        problems.append(_at(node, source, f"{where}: expected a mapping of "
                                          f"{', '.join(ACTION_CLASSES)}"))  # fmt: skip
        return budgets
    for key_node, value_node in node.value:
        key = str(key_node.value)
        if key in other:
            continue
        if key not in ACTION_CLASSES:
            expected = ", ".join((*ACTION_CLASSES, *sorted(other)))
            problems.append(_at(key_node, source, f"{where}: unknown key {key!r} "
                                                  f"(expected {expected})"))  # fmt: skip
            continue
        if key in budgets:
            problems.append(_at(key_node, source, f"{where}: duplicate key {key!r}"))
            continue
        origin = f"{source}:{key_node.start_mark.line + 1}"
        try:
            budgets[key] = _budget_value(value_node, name, key, origin)
        except ValueError as exc:
            problems.append(_at(value_node, source, f"{where}.{key}: {exc}"))
    return budgets


def _budget_value(node: yaml.Node, name: str, action: ActionClass, origin: str) -> Budget:
    value = construct(node)
    if value == UNLIMITED:
        return Budget(name, action, None, 1, origin)
    if not isinstance(value, dict) or set(value) != {"limit", "per"}:
        raise ValueError(f"expected {{limit: N, per: DURATION}} or {UNLIMITED}, got {value!r}")
    parse: Callable[[object], int] = _bytes if action == "blob_bytes" else _count
    per = value["per"]
    if not isinstance(per, str) and not (isinstance(per, int) and not isinstance(per, bool)):
        raise ValueError(f"per: expected a duration (30m, 6h, 1d), got {per!r}")
    seconds = parse_duration(str(per) + ("s" if isinstance(per, int) else ""))
    if seconds > MAX_PER:
        raise ValueError(f"per: at most {describe_duration(MAX_PER)}, got {per!r}")
    return Budget(name, action, parse(value["limit"]), seconds, origin)


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"limit: expected a positive number of requests, got {value!r}")
    return value


def _bytes(value: object) -> int:
    """Bytes: a positive number, or with a unit (`500MB`, `50GiB`)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    match = _SIZE_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    amount = int(float(match[1]) * _SIZE_UNITS[(match[2] or "").lower()]) if match else 0
    if amount < 1:
        raise ValueError(f"limit: expected bytes (a number, or 500MB, 50GiB), got {value!r}")
    return amount


_SELECTORS = {"name", "users", "groups"}


def _overrides(node: yaml.Node, source: str, problems: list[Problem]) -> tuple[Override, ...]:
    if not isinstance(node, yaml.SequenceNode):
        problems.append(_at(node, source, "rate_limits.overrides: expected a list"))
        return ()
    found = []
    for index, item in enumerate(node.value):
        override = _override(item, index, source, problems)
        if override is not None:
            found.append(override)
    return tuple(found)


def _override(node: yaml.Node, index: int, source: str, problems: list[Problem]) -> Override | None:
    where = f"rate_limits.overrides[{index}]"
    if not isinstance(node, yaml.MappingNode):
        problems.append(_at(node, source, f"{where}: expected a mapping (users or groups, "
                                          "and budgets)"))  # fmt: skip
        return None
    values: dict[str, Any] = {}
    for key_node, value_node in node.value:
        if key_node.value in _SELECTORS:
            try:
                values[key_node.value] = _selector(key_node.value, construct(value_node))
            except ValueError as exc:
                problems.append(_at(value_node, source, f"{where}.{key_node.value}: {exc}"))
                return None
    if not values.get("users") and not values.get("groups"):
        problems.append(_at(node, source, f"{where}: needs users or groups"))
        return None
    name = values.get("name") or _default_name(values, index)
    budgets = _budgets(node, source, where, name, problems, _SELECTORS)
    if not budgets and not any(key.value in ACTION_CLASSES for key, _ in node.value):
        problems.append(_at(node, source, f"{where}: names no budget "
                                          f"({', '.join(ACTION_CLASSES)})"))  # fmt: skip
    if not budgets:
        return None
    return Override(name, values.get("users", frozenset()), values.get("groups", frozenset()),
                    budgets)  # fmt: skip


def _selector(key: str, value: object) -> Any:
    if key == "name":
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9:._-]{1,64}", value):
            raise ValueError(f"expected up to 64 letters, digits, ':', '.', '_' or '-', "
                             f"got {value!r}")  # fmt: skip
        return value
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(item, str) and item for item in items):
        raise ValueError(f"expected a name or a list of names, got {value!r}")
    return frozenset(items)


def _default_name(values: Mapping[str, frozenset[str]], index: int) -> str:
    """`group:ci` or `user:alice` for an override of one of them, else its place."""
    users, groups = values.get("users", frozenset()), values.get("groups", frozenset())
    if len(users) + len(groups) == 1:
        return f"group:{next(iter(groups))}" if groups else f"user:{next(iter(users))}"
    return f"overrides[{index}]"
