"""The quarantine file (`quarantine.file`): a YAML list, written by `regproxy quarantine` and
fine to edit by hand; and the same entries as the shared store keeps them. Pure but for
`load_quarantine`.

    - digest: sha256:4f2c...                # a manifest (image or index) or a blob
      reason: "INC-77: a token baked into a layer"
      added: "2026-12-06T23:00:00Z"
      added_by: bob                         # optional
      blobs: false                          # optional: refuse the manifest only, not its blobs
      image_blobs:                          # optional: its config and layers (an index: its
      - sha256:9b1e...                      #   images'), recorded by `regproxy quarantine add`

An entry that cannot be used disables that entry only, reported as `file:line`; a repeated
digest disables the later entry. A file that is not a YAML list keeps the last good version.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..core.moments import parse_moment, timestamp
from ..core.problems import Problem, read_text
from ..core.yamllist import EntryFormat, read_entries
from ..http.routes import DIGEST_RE
from .quarantine import NO_QUARANTINE, Entry, Quarantine

_KEYS = ("digest", "reason", "added", "added_by", "blobs", "image_blobs")
_REQUIRED = ("digest", "reason", "added")
_HEX_DIGITS = {"sha256": 64, "sha384": 96, "sha512": 128}
SHARED_ORIGIN = "the shared store"  # where an entry of the Redis hash comes from


@dataclass(frozen=True)
class QuarantineSettings:
    """`quarantine:` in the config: the quarantine file (none: only the shared store's)."""

    file: Path | None = None


def digest_problem(value: object) -> str | None:
    """Why `value` is not a digest a request can name, or None."""
    if not isinstance(value, str) or not DIGEST_RE.fullmatch(value):
        return f"expected a digest like sha256:<64 hex digits>, got {value!r}"
    algorithm, _, hexdigits = value.partition(":")
    size = _HEX_DIGITS.get(algorithm)
    if size is not None and len(hexdigits) != size:
        return f"a {algorithm} digest has {size} hex digits, got {len(hexdigits)} in {value!r}"
    return None


def text_problem(value: object) -> str | None:
    """Why `value` is not one line of text, or None."""
    if not isinstance(value, str) or not value.strip() or not value.isprintable():
        return f"expected one line of text, got {value!r}"
    return None


def _field(key: str, value: Any) -> Any:
    problem = None
    if key == "digest":
        problem = digest_problem(value)
    elif key in ("reason", "added_by"):
        problem = text_problem(value)
    elif key == "blobs":
        if not isinstance(value, bool):
            problem = f"expected true or false, got {value!r}"
    elif key == "image_blobs":
        return _digests(value)
    elif key == "added":
        try:
            return parse_moment(value)
        except ValueError as exc:
            problem = str(exc)
    if problem is not None:
        raise ValueError(f"{key}: {problem}")
    return value


def _digests(value: Any) -> frozenset[str]:
    """A list of digests (`image_blobs`); ValueError names the first bad one."""
    if not isinstance(value, list):
        raise ValueError(f"image_blobs: expected a list of digests, got {value!r}")
    for n, item in enumerate(value, 1):
        problem = digest_problem(item)
        if problem is not None:
            raise ValueError(f"image_blobs: item {n}: {problem}")
    return frozenset(value)


FORMAT = EntryFormat("quarantine entry", _KEYS, _REQUIRED, "digest", _field)


def parse_quarantine(text: str, source: str) -> tuple[Quarantine, list[Problem]]:
    """The usable entries of a file, and the entries that were skipped (file:line). Raises
    ConfigError when the file is not a YAML list at all."""
    entries, problems = read_entries(text, source, FORMAT)
    return Quarantine(
        Entry(origin=f"{source}:{line}", **values) for line, values in entries
    ), problems


def load_quarantine(settings: QuarantineSettings) -> tuple[Quarantine, list[Problem]]:
    """The quarantine file; none configured, or a missing file, quarantines nothing
    (`regproxy quarantine add` makes it)."""
    path = settings.file
    if path is None or not path.exists():
        return NO_QUARANTINE, []
    return parse_quarantine(read_text(path), str(path))


def entry_fields(entry: Entry) -> dict[str, Any]:
    """An entry's keys and values as the file and the shared store write them."""
    fields: dict[str, Any] = {"digest": entry.digest, "reason": entry.reason,
                              "added": timestamp(entry.added)}  # fmt: skip
    if entry.added_by:
        fields["added_by"] = entry.added_by
    if not entry.blobs:
        fields["blobs"] = False
    if entry.image_blobs is not None:
        fields["image_blobs"] = sorted(entry.image_blobs)
    return fields


def entry_text(entry: Entry) -> str:
    """An entry as a block of the file, to append."""
    return yaml.safe_dump([entry_fields(entry)], sort_keys=False, width=1000)


def shared_value(entry: Entry) -> str:
    """An entry as the shared store keeps it: a JSON object, under its digest."""
    fields = entry_fields(entry)
    del fields["digest"]
    return json.dumps(fields, sort_keys=True)


def parse_shared(fields: Mapping[bytes, bytes]) -> tuple[Quarantine, list[str]]:
    """The entries of the shared store's hash (digest -> JSON object), and why any was
    skipped: a bad entry disables itself only."""
    entries: list[Entry] = []
    problems: list[str] = []
    for raw_digest, raw in sorted(fields.items()):
        digest = raw_digest.decode("utf-8", "replace")
        try:
            values = json.loads(raw)
            if not isinstance(values, dict):
                raise ValueError("expected a JSON object")
            values["digest"] = digest
            missing = [key for key in _REQUIRED if key not in values]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
            checked = {key: _field(key, value) for key, value in values.items() if key in _KEYS}
            entries.append(Entry(origin=SHARED_ORIGIN, **checked))
        except ValueError as exc:
            problems.append(f"quarantine entry {digest!r} in the shared store disabled: {exc}")
    return Quarantine(entries), problems
