"""Quarantine: digests no request may reach, whatever allowed it. Pure.

An entry names a manifest (an image or an index) or a blob by digest, why, and who put it there.
A request is refused (`Refused`) when it asks for a quarantined digest (a manifest or blob by
digest), when the registry's answer turns out to be one (a manifest by tag: the digest the
answer names and the digest of its bytes), when a manifest it gets holds one (an index, nested
indexes included), or when it asks for a blob a quarantined image lists as a layer or config
(unless its entry says `blobs: false`): the blobs `regproxy quarantine add` recorded with the
entry (`image_blobs`), else those learned from the image's manifest. The guard that applies
it: `proxy.guards.quarantine`; the file: `proxy.policy.quarantinefile`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ..core.moments import timestamp
from ..http.routes import DIGEST_RE, Operation


@dataclass(frozen=True)
class Entry:
    """One quarantined digest."""

    digest: str
    reason: str
    added: float  # epoch seconds
    added_by: str | None = None
    blobs: bool = True  # the blobs the image lists are refused too
    origin: str = ""  # file:line, or where the shared store keeps it
    # The config and layers the image lists (an index: its images'), read from its bytes by
    # `regproxy quarantine add`; None: not recorded (a hand-written entry), learned by reading.
    image_blobs: frozenset[str] | None = None

    def record(self) -> dict[str, str | None]:
        """What the audit log says of it."""
        return {"digest": self.digest, "reason": self.reason, "added_by": self.added_by,
                "added": timestamp(self.added)}  # fmt: skip


@dataclass(frozen=True)
class Refused:
    """Why a request is refused: the entry, and how the request reaches its digest."""

    entry: Entry
    how: str  # "", or what leads to the digest: "tag v1 names it", "index sha256:... holds it"
    kind: str  # for metrics: manifest, tag, index, blob

    @property
    def message(self) -> str:
        via = f" ({self.how})" if self.how else ""
        return f"{self.entry.digest} is quarantined{via}: {self.entry.reason}"


class Quarantine:
    """The quarantined digests in force: one file's entries, with the shared store's merged in."""

    __slots__ = ("_entries", "_recorded")

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        kept: dict[str, Entry] = {}
        for entry in entries:
            kept.setdefault(entry.digest, entry)  # the first one of a digest wins
        self._entries: Mapping[str, Entry] = MappingProxyType(kept)
        recorded: dict[str, Entry] = {}
        for entry in kept.values():
            if entry.blobs and entry.image_blobs:
                for blob in entry.image_blobs:
                    recorded.setdefault(blob, entry)
        self._recorded: Mapping[str, Entry] = MappingProxyType(recorded)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries.values())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Quarantine) and dict(self._entries) == dict(other._entries)

    def __hash__(self) -> int:
        return hash(frozenset(self._entries))

    def get(self, digest: str | None) -> Entry | None:
        return self._entries.get(digest) if digest is not None else None

    def merged(self, other: Quarantine) -> Quarantine:
        """Both sets; where both name a digest, this one's entry."""
        if not other:
            return self
        if not self:
            return other
        return Quarantine([*self, *other])

    def first(self, digests: Iterable[str]) -> Entry | None:
        """The entry of the first quarantined digest among `digests` (in sorted order)."""
        return next((e for d in sorted(digests) if (e := self._entries.get(d)) is not None), None)

    def recorded(self, blob: str) -> Entry | None:
        """The entry whose recorded `image_blobs` list `blob` (its blobs refused)."""
        return self._recorded.get(blob)

    def to_learn(self) -> list[Entry]:
        """The entries whose image's blobs are refused but not recorded: learned by reading."""
        return [e for e in self._entries.values() if e.blobs and e.image_blobs is None]


NO_QUARANTINE = Quarantine()


def requested(quarantine: Quarantine, operation: Operation) -> Refused | None:
    """A request for a quarantined digest itself: a manifest or a blob by digest (any method)."""
    reference = operation.reference
    if operation.kind not in ("manifest", "blob") or reference is None:
        return None
    if not DIGEST_RE.fullmatch(reference):
        return None
    entry = quarantine.get(reference)
    return Refused(entry, "", operation.kind) if entry is not None else None


def answered(
    quarantine: Quarantine, operation: Operation, digests: Iterable[str], held: Iterable[str]
) -> Refused | None:
    """A manifest answer refused: `digests` name what was answered (the registry's
    Docker-Content-Digest and the digest of the bytes read), `held` every manifest nested in it."""
    named = quarantine.first(digests)
    if named is not None:
        tag = operation.tag
        return (
            Refused(named, f"tag {tag} names it", "tag") if tag else Refused(named, "", "manifest")
        )
    inside = quarantine.first(held)
    if inside is None:
        return None
    what = operation.reference or "?"
    return Refused(inside, f"{what} is an index that holds it", "index")


def listed(
    quarantine: Quarantine, blob: str, blobs_of: Mapping[str, frozenset[str]]
) -> Refused | None:
    """A blob that a quarantined image (with its blobs refused) lists as a layer or config:
    recorded with its entry, or in `blobs_of` (each other quarantined digest's blobs, as far
    as they are known)."""
    learned = (e for e in quarantine.to_learn() if blob in blobs_of.get(e.digest, frozenset()))
    entry = quarantine.recorded(blob) or next(learned, None)
    return Refused(entry, f"blob {blob} is a layer or config of it", "blob") if entry else None
