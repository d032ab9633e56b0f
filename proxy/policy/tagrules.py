"""Immutable tags and protected deletes: what a push or delete must pass besides the ACL. Every
rule that matches applies, in any order. Pure."""

#   immutable_tags:             # a tag, once pushed, always names the same manifest
#     - repositories: ["apps/**"]
#       tags: ["v*"]
#   protected_deletes:          # regardless of delete rights
#     - repositories: ["base/**"]           # no manifest or blob is deleted here
#     - repositories: ["apps/**"]
#       tags: ["v*", "latest"]              # nor what these tags point to
#     - repositories: ["scratch/**"]
#       allow_by_digest: true               # deletes by digest only, never by tag

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Literal

from ..http.routes import Operation
from .globs import glob_regex

TagRuleKind = Literal["immutable", "protected"]


@dataclass(frozen=True)
class TagRule:
    """One `immutable_tags` or `protected_deletes` entry (empty `repositories` or `tags`:
    every one)."""

    kind: TagRuleKind
    repositories: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    allow_by_digest: bool = False  # protected deletes: a DELETE by digest goes on
    origin: str = "built-in"
    description: str = field(default="", compare=False)

    def matches_repository(self, repository: str) -> bool:
        return not self.repositories or _any_glob(self.repositories, repository)

    def matches_tag(self, tag: str) -> bool:
        return not self.tags or _any_glob(self.tags, tag)

    @property
    def label(self) -> str:
        """How a client is told which rule refused it: the file's name (not its directory)
        and line, and the rule's description."""
        source, _, line = self.origin.rpartition(":")
        name = f"{PurePath(source).name}:{line}" if source else self.origin
        return f'{name} "{self.description}"' if self.description else name


def _any_glob(patterns: tuple[str, ...], name: str) -> bool:
    return any(glob_regex(pattern).fullmatch(name) for pattern in patterns)


@dataclass(frozen=True)
class Overwrite:
    """Before a manifest PUT of `tag`: the tag must be absent upstream, or name the very
    manifest pushed (clients retry pushes)."""

    repository: str
    tag: str
    rule: TagRule


@dataclass(frozen=True)
class Pointers:
    """Before a manifest DELETE of `digest`: no tag that `rules` guard may name it, directly or
    as part of an index."""

    repository: str
    digest: str
    rules: tuple[TagRule, ...]

    def guarding(self, tag: str) -> TagRule | None:
        """The rule that guards `tag`, if any."""
        return next((rule for rule in self.rules if rule.matches_tag(tag)), None)


@dataclass(frozen=True)
class Denied:
    """Refused without asking the registry (403 DENIED): the rule, and what the client is told."""

    rule: TagRule
    message: str


Check = Overwrite | Pointers


def plan(rules: tuple[TagRule, ...], operation: Operation) -> Denied | Check | None:
    """What `operation` (allowed by the ACL) must pass: None when nothing guards it."""
    repository = operation.repository
    if not rules or repository is None or operation.action not in ("push", "delete"):
        return None
    here = tuple(rule for rule in rules if rule.matches_repository(repository))
    if not here:
        return None
    if operation.kind == "blob" and operation.action == "delete":
        return _blob_delete(here, repository)
    if operation.kind != "manifest":
        return None
    tag = operation.tag
    if operation.action == "push":
        return _push(here, repository, tag) if tag is not None else None
    if tag is not None:
        return _tag_delete(here, repository, tag)
    return _digest_delete(here, repository, operation.reference or "")


def _push(rules: tuple[TagRule, ...], repository: str, tag: str) -> Overwrite | None:
    rule = next((r for r in rules if r.kind == "immutable" and r.matches_tag(tag)), None)
    return None if rule is None else Overwrite(repository, tag, rule)


def _tag_delete(rules: tuple[TagRule, ...], repository: str, tag: str) -> Denied | None:
    rule = next((r for r in rules if r.matches_tag(tag)), None)
    if rule is None:
        return None
    if rule.kind == "immutable":
        return Denied(rule, f"tag {tag} is immutable (rule {rule.label}): it is never deleted")
    hint = ": delete by digest" if rule.allow_by_digest else ""
    message = f"deleting tag {tag} of {repository} is refused (rule {rule.label}){hint}"
    return Denied(rule, message)


def _digest_delete(
    rules: tuple[TagRule, ...], repository: str, digest: str
) -> Check | Denied | None:
    never = next((r for r in rules if _protects_everything(r)), None)
    if never is not None:
        return Denied(never, f"manifests of {repository} are never deleted (rule {never.label})")
    guarding = tuple(r for r in rules if not r.allow_by_digest)
    return Pointers(repository, digest, guarding) if guarding else None


def _blob_delete(rules: tuple[TagRule, ...], repository: str) -> Denied | None:
    rule = next((r for r in rules if not r.allow_by_digest), None)
    if rule is None:
        return None
    message = (
        f"blobs of {repository} are never deleted: its tagged manifests are protected"
        f" (rule {rule.label})"
    )
    return Denied(rule, message)


def _protects_everything(rule: TagRule) -> bool:
    return rule.kind == "protected" and not rule.tags and not rule.allow_by_digest
