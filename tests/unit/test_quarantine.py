"""Quarantine by tables and properties: the file (a bad entry disables only itself, file:line),
the shared store's entries, merging the two, the decisions (by digest, by tag, through an
index, through a blob an image lists), what a manifest's bytes list, the CLI's entry text."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.problems import ConfigError
from proxy.core.yamllist import appended, without_entries
from proxy.http.routes import DIGEST_RE, Operation, classify
from proxy.policy.quarantine import Entry, Quarantine, answered, listed, requested
from proxy.policy.quarantinefile import (
    entry_text,
    parse_quarantine,
    parse_shared,
    shared_value,
)
from proxy.upstream.manifests import NOTHING, Contents, contents_of

T0 = 1_893_456_000.0  # 2030-01-01T00:00:00Z
A, B, C, L1, L2 = (f"sha256:{c * 64}" for c in "abcde")
FILE = f"""\
# quarantine
- digest: {A}
  reason: "INC-77: a token baked into a layer"
  added: "2030-01-01T00:00:00Z"
  added_by: bob
- digest: {B}
  reason: only the manifest
  added: 2030-01-01 00:00:00
  blobs: false
"""


def test_a_good_file() -> None:
    quarantine, problems = parse_quarantine(FILE, "q.yaml")
    assert problems == []
    first, second = quarantine
    assert first == Entry(A, "INC-77: a token baked into a layer", T0, "bob", True, "q.yaml:2")
    assert (second.digest, second.blobs, second.added_by, second.origin) == (
        B, False, None, "q.yaml:6"
    )  # fmt: skip


@pytest.mark.parametrize(
    ("entry", "line", "message"),
    [
        ("- digest: sha256:12\n  reason: x\n  added: 2030-01-01\n", 1,
         "digest: a sha256 digest has 64 hex digits, got 2 in 'sha256:12'"),
        ("- digest: latest\n  reason: x\n  added: 2030-01-01\n", 1,
         "digest: expected a digest like sha256:<64 hex digits>, got 'latest'"),
        (f"- digest: {C}\n  added: 2030-01-01\n", 1, "missing reason"),
        (f"- digest: {C}\n  reason: x\n  added: soon\n", 3,
         "added: expected an ISO 8601 date and time, got 'soon'"),
        (f"- digest: {C}\n  reason: x\n  added: 2030-01-01\n  blobs: no-thanks\n", 4,
         "blobs: expected true or false, got 'no-thanks'"),
        (f"- digest: {C}\n  reason: x\n  added: 2030-01-01\n  tag: v1\n", 4,
         "unknown key 'tag' (known: digest, reason, added, added_by, blobs, image_blobs)"),
        (f"- digest: {C}\n  reason: ''\n  added: 2030-01-01\n", 2,
         "reason: expected one line of text, got ''"),
        (f"- digest: {C}\n  reason: x\n  added: 2030-01-01\n  image_blobs: {L1}\n", 4,
         f"image_blobs: expected a list of digests, got '{L1}'"),
        (f"- digest: {C}\n  reason: x\n  added: 2030-01-01\n  image_blobs:\n  - {L1}\n"
         "  - sha256:12\n", 4,
         "image_blobs: item 2: a sha256 digest has 64 hex digits, got 2 in 'sha256:12'"),
        (f"- digest: {C}\n  reason: x\n  added: 2030-01-01\n  image_blobs: [{L1}, 7]\n", 4,
         "image_blobs: item 2: expected a digest like sha256:<64 hex digits>, got 7"),
    ],
)  # fmt: skip
def test_a_bad_entry_disables_only_itself(entry: str, line: int, message: str) -> None:
    quarantine, problems = parse_quarantine(FILE + entry, "q.yaml")
    assert [e.digest for e in quarantine] == [A, B]
    assert [(p.line, p.message) for p in problems] == [
        (10 + line - 1, f"quarantine entry disabled: {message}")
    ]


def test_a_repeated_digest_disables_the_later_entry() -> None:
    again = f"- digest: {A}\n  reason: again\n  added: 2030-01-01\n"
    quarantine, problems = parse_quarantine(FILE + again, "q.yaml")
    assert quarantine.get(A) is not None and quarantine.get(A).reason.startswith("INC-77")  # type: ignore[union-attr]
    assert [str(p) for p in problems] == [
        f"q.yaml:10: quarantine entry {A!r} repeated (q.yaml:2 wins)"
    ]


@pytest.mark.parametrize("text", ["digest: x\n", "[unclosed\n", "42\n"])
def test_a_file_that_is_no_list_is_refused_whole(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_quarantine(text, "q.yaml")


def test_an_empty_file_quarantines_nothing() -> None:
    assert not parse_quarantine("# nothing yet\n", "q.yaml")[0]


def test_the_shared_store_entries_and_a_bad_one() -> None:
    entry = Entry(C, "from another replica", T0, "carol", False)
    fields = {
        C.encode(): shared_value(entry).encode(),
        A.encode(): b"not json",
        B.encode(): json.dumps({"reason": "x"}).encode(),
        b"sha256:12": json.dumps({"reason": "x", "added": "2030-01-01"}).encode(),
    }
    shared, problems = parse_shared(fields)
    assert list(shared) == [Entry(C, "from another replica", T0, "carol", False,
                                  "the shared store")]  # fmt: skip
    assert len(problems) == 3
    assert f"quarantine entry {B!r} in the shared store disabled: missing added" in problems


def test_the_file_wins_where_both_name_a_digest() -> None:
    local, _ = parse_quarantine(FILE, "q.yaml")
    shared = Quarantine([Entry(A, "shared", T0), Entry(C, "shared too", T0)])
    merged = local.merged(shared)
    assert [e.digest for e in merged] == [A, B, C]
    assert merged.get(A).origin == "q.yaml:2"  # type: ignore[union-attr]
    assert local.merged(Quarantine()) is local and Quarantine().merged(shared) is shared


def test_entry_text_round_trips_through_the_file() -> None:
    entry = Entry(C, "INC-9: 'quoted' #not a comment", T0, "dave", False)
    text = appended(FILE, entry_text(entry), "")
    quarantine, problems = parse_quarantine(text, "q.yaml")
    assert problems == [] and quarantine.get(C) == Entry(C, entry.reason, T0, "dave", False,
                                                         "q.yaml:10")  # fmt: skip
    kept = without_entries(text, "q.yaml", "digest", (A,))
    assert kept is not None and [e.digest for e in parse_quarantine(kept, "q.yaml")[0]] == [B, C]


QUARANTINE = Quarantine([Entry(A, "bad image", T0), Entry(B, "manifest only", T0, blobs=False)])


@pytest.mark.parametrize(
    ("entries", "blob", "decides"),
    [
        ([Entry(A, "r", T0, image_blobs=frozenset({L1, L2}))], L2, A),
        ([Entry(A, "r", T0, image_blobs=frozenset({L1}))], L2, None),
        ([Entry(A, "r", T0, blobs=False, image_blobs=frozenset({L1}))], L1, None),  # manifest only
        ([Entry(A, "r", T0, image_blobs=frozenset()), Entry(B, "r", T0)], L1, None),
        ([Entry(C, "r", T0, image_blobs=frozenset({L1})), Entry(A, "r", T0,
          image_blobs=frozenset({L1}))], L1, C),  # the first entry listing it
    ],
)  # fmt: skip
def test_recorded_blobs_decide_without_reading_anything(
    entries: list[Entry], blob: str, decides: str | None
) -> None:
    quarantine = Quarantine(entries)
    refused = listed(quarantine, blob, {})
    assert (refused.entry.digest if refused else None) == decides
    assert [e.digest for e in quarantine.to_learn()] == [
        e.digest for e in entries if e.blobs and e.image_blobs is None
    ]


def test_recorded_blobs_round_trip_through_the_file_and_the_shared_store() -> None:
    entry = Entry(C, "INC-9", T0, "dave", image_blobs=frozenset({L1, L2}))
    text = appended(FILE, entry_text(entry), "")
    assert f"  image_blobs:\n  - {L1}\n  - {L2}\n" in text  # one digest a line
    read = parse_quarantine(text, "q.yaml")[0].get(C)
    assert read is not None and read.image_blobs == {L1, L2}
    shared, problems = parse_shared({C.encode(): shared_value(entry).encode()})
    assert problems == [] and shared.recorded(L2) == shared.get(C)
    assert parse_quarantine(FILE, "q.yaml")[0].get(A).image_blobs is None  # type: ignore[union-attr]
    bad = json.dumps({"reason": "x", "added": "2030-01-01", "image_blobs": ["sha256:12"]})
    assert not parse_shared({C.encode(): bad.encode()})[0]


def op(method: str, path: str) -> Operation:
    operation = classify(method, path)
    assert isinstance(operation, Operation)
    return operation


@pytest.mark.parametrize(
    ("method", "path", "kind"),
    [
        ("GET", f"/v2/apps/web/manifests/{A}", "manifest"),
        ("HEAD", f"/v2/apps/web/manifests/{A}", "manifest"),
        ("DELETE", f"/v2/apps/web/manifests/{A}", "manifest"),
        ("PUT", f"/v2/apps/web/manifests/{A}", "manifest"),
        ("GET", f"/v2/other/blobs/{A}", "blob"),
        ("GET", f"/v2/apps/web/manifests/{C}", None),
        ("GET", "/v2/apps/web/manifests/v1", None),
        ("GET", "/v2/apps/web/tags/list", None),
        ("GET", "/v2/", None),
    ],
)
def test_requests_for_a_quarantined_digest(method: str, path: str, kind: str | None) -> None:
    refused = requested(QUARANTINE, op(method, path))
    assert (refused.kind if refused else None) == kind
    if refused is not None:
        assert refused.message == f"{A} is quarantined: bad image"


@pytest.mark.parametrize(
    ("path", "digests", "held", "message"),
    [
        ("/v2/r/manifests/v1", {A}, (), f"{A} is quarantined (tag v1 names it): bad image"),
        ("/v2/r/manifests/v1", {C, B}, (), f"{B} is quarantined (tag v1 names it): manifest only"),
        (f"/v2/r/manifests/{C}", {C}, {L1, A},
         f"{A} is quarantined ({C} is an index that holds it): bad image"),
        ("/v2/r/manifests/multi", {C}, {A},
         f"{A} is quarantined (multi is an index that holds it): bad image"),
        ("/v2/r/manifests/v1", {C}, {L1}, None),
        ("/v2/r/manifests/v1", set(), (), None),
    ],
)  # fmt: skip
def test_answers_refused(path: str, digests: set[str], held: set[str], message: str | None) -> None:
    refused = answered(QUARANTINE, op("GET", path), digests, held)
    assert (refused.message if refused else None) == message


def test_blobs_an_image_lists_unless_its_entry_says_manifest_only() -> None:
    blobs_of = {A: frozenset({L1}), B: frozenset({L2})}
    refused = listed(QUARANTINE, L1, blobs_of)
    assert refused is not None and refused.kind == "blob"
    assert (
        refused.message == f"{A} is quarantined (blob {L1} is a layer or config of it): bad image"
    )
    assert listed(QUARANTINE, L2, blobs_of) is None  # B: blobs: false
    assert listed(QUARANTINE, L1, {}) is None  # not known (yet)


@given(st.sets(st.sampled_from([A, B, C, L1, L2])), st.sets(st.sampled_from([A, B, C, L1, L2])))
def test_an_answer_passes_exactly_when_nothing_it_names_or_holds_is_quarantined(
    digests: set[str], held: set[str]
) -> None:
    refused = answered(QUARANTINE, op("GET", "/v2/r/manifests/v1"), digests, held)
    assert (refused is None) == (not (digests | held) & {A, B})
    if refused is not None and digests & {A, B}:
        assert refused.kind == "tag"  # what the answer names comes before what it holds


@given(st.lists(st.sampled_from([A, B, C]), max_size=6), st.lists(st.sampled_from([A, B, C])))
def test_merging_keeps_every_digest_once(left: list[str], right: list[str]) -> None:
    one = Quarantine(Entry(d, "left", T0) for d in left)
    two = Quarantine(Entry(d, "right", T0) for d in right)
    merged = one.merged(two)
    assert sorted(e.digest for e in merged) == sorted(set(left) | set(right))
    assert all(e.reason == "left" for e in merged if e.digest in left)


IMAGE = {
    "schemaVersion": 2,
    "config": {"digest": L1, "mediaType": "application/vnd.oci.image.config.v1+json"},
    "layers": [{"digest": L2}, {"digest": "not a digest"}, "junk"],
}


@pytest.mark.parametrize(
    ("document", "contents"),
    [
        (IMAGE, Contents(blobs=frozenset({L1, L2}))),
        ({"manifests": [{"digest": A, "mediaType": "application/vnd.oci.image.manifest.v1+json"},
                        {"digest": "../../x"}]}, Contents(manifests=frozenset({A}))),
        ({"schemaVersion": 1, "fsLayers": [{"blobSum": L1}, {"blobSum": 7}]},
         Contents(blobs=frozenset({L1}))),
        ({"mediaType": "application/vnd.oci.artifact.manifest.v1+json", "blobs": [{"digest": L2}]},
         Contents(blobs=frozenset({L2}))),
        ([1, 2], NOTHING),
        ({"layers": "many"}, NOTHING),
    ],
)  # fmt: skip
def test_what_a_manifests_bytes_list(document: object, contents: Contents) -> None:
    assert contents_of(json.dumps(document).encode()) == contents


@given(st.binary(max_size=200))
def test_any_bytes_list_only_digests(body: bytes) -> None:
    contents = contents_of(body)
    assert all(DIGEST_RE.fullmatch(d) for d in contents.manifests | contents.blobs)


def test_deep_nesting_is_not_a_crash() -> None:
    assert contents_of(b"[" * 100_000 + b"]" * 100_000) == NOTHING
