"""Unit tables for proxy.http.routes.classify over the OCI distribution spec's endpoints."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy.http.routes import (
    NAME_MAX,
    NAME_RE,
    Operation,
    Refusal,
    _endpoint,
    classify,
    valid_name,
    without_mount,
)

DIGEST = "sha256:" + "ab" * 32
DIGEST2 = "sha512:" + "cd" * 64
UPLOAD_ID = "2c5b2d1b-0c3f-4a57-9e0a-6c1a3d1e7f00"

ALL_METHODS = [
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "PATCH",
    "DELETE",
    "OPTIONS",
    "TRACE",
    "CONNECT",
    "PROPFIND",
    "get",
    "head",
    "Post",
    "delete",
    "",
    " GET",
]

# (id, path, kind, repository, reference, {method: action}); every other method -> 405.
ENDPOINTS = [
    ("ping", "/v2/", "ping", None, None, {"GET": None, "HEAD": None}),
    ("ping-no-slash", "/v2", "ping", None, None, {"GET": None, "HEAD": None}),
    ("catalog", "/v2/_catalog", "catalog", None, None, {"GET": None}),
    (
        "manifest-tag",
        "/v2/library/ubuntu/manifests/latest",
        "manifest",
        "library/ubuntu",
        "latest",
        {"GET": "pull", "HEAD": "pull", "PUT": "push", "DELETE": "delete"},
    ),
    (
        "manifest-digest",
        f"/v2/a/manifests/{DIGEST}",
        "manifest",
        "a",
        DIGEST,
        {"GET": "pull", "HEAD": "pull", "PUT": "push", "DELETE": "delete"},
    ),
    (
        "blob",
        f"/v2/a/b/c/blobs/{DIGEST}",
        "blob",
        "a/b/c",
        DIGEST,
        {"GET": "pull", "HEAD": "pull", "DELETE": "delete"},
    ),
    ("upload-start", "/v2/a/blobs/uploads/", "upload-start", "a", None, {"POST": "push"}),
    (
        "upload",
        f"/v2/a/blobs/uploads/{UPLOAD_ID}",
        "upload",
        "a",
        UPLOAD_ID,
        {"GET": "push", "PATCH": "push", "PUT": "push", "DELETE": "push"},
    ),
    ("tags", "/v2/team/app/tags/list", "tags", "team/app", None, {"GET": "pull"}),
    (
        "referrers",
        f"/v2/a/referrers/{DIGEST}",
        "referrers",
        "a",
        DIGEST,
        {"GET": "pull"},
    ),
]

METHOD_TABLE = [
    pytest.param(method, path, kind, repo, ref, allowed, id=f"{name}-{method or 'empty'}")
    for name, path, kind, repo, ref, allowed in ENDPOINTS
    for method in ALL_METHODS
]


@pytest.mark.parametrize(("method", "path", "kind", "repo", "ref", "allowed"), METHOD_TABLE)
def test_every_endpoint_with_every_method(
    method: str,
    path: str,
    kind: str,
    repo: str | None,
    ref: str | None,
    allowed: dict[str, str | None],
) -> None:
    result = classify(method, path)
    if method in allowed:
        assert result == Operation(kind, allowed[method], repo, ref, None)  # type: ignore[arg-type]
    else:
        assert isinstance(result, Refusal)
        assert (result.status, result.code) == (405, "UNSUPPORTED")
        assert method in result.message
        assert result.allow == ", ".join(sorted(allowed))  # as the registry's Allow header


@dataclass(frozen=True)
class Answer:
    """A request regproxy answers itself, never forwarding it, and what Debian's
    docker-registry 2.8 answers for the same request (probed: tests/e2e/test_refusals.py
    replays every row against the real registry and the real proxy)."""

    method: str
    path: str
    query: str
    status: int
    code: str
    registry: int  # the registry's status, without credentials (it has no auth configured)


# Every kind of refusal. Status and code follow the spec (its error codes only); where the
# registry's status differs, the comment says why.
REFUSALS = [
    # Not a distribution endpoint: 404 like the registry's router (which redirects a trailing
    # slash; the proxy forwards no path it would have to rewrite).
    pytest.param(Answer("GET", "/foo", "", 404, "UNSUPPORTED", 404), id="outside-v2"),
    pytest.param(Answer("GET", "/v2foo", "", 404, "UNSUPPORTED", 404), id="v2-prefix"),
    pytest.param(Answer("GET", "/v2/a/unknown/x", "", 404, "UNSUPPORTED", 404), id="no-endpoint"),
    pytest.param(Answer("GET", "/v2/a/tags/list/", "", 404, "UNSUPPORTED", 301), id="slash"),
    # A name outside the grammar: the spec's NAME_INVALID. The registry has no route (404),
    # fails (500), or reads another repository: %2F decoded to a/b, dot segments redirected.
    pytest.param(Answer("GET", "/v2/A/manifests/x", "", 400, "NAME_INVALID", 404), id="upper"),
    pytest.param(
        Answer("GET", "/v2/a%2Fb/manifests/x", "", 400, "NAME_INVALID", 404), id="encoded-slash"
    ),
    pytest.param(Answer("GET", "/v2/a/../b/manifests/x", "", 400, "NAME_INVALID", 301), id="dots"),
    pytest.param(
        Answer("GET", f"/v2/{'a' * 256}/manifests/x", "", 400, "NAME_INVALID", 500), id="long-name"
    ),
    # A manifest reference that is neither tag nor digest names no manifest: 404 as the
    # registry, with the spec's code for a manifest that is not there.
    pytest.param(
        Answer("GET", "/v2/a/manifests/.INVALID_MANIFEST_NAME", "", 404, "MANIFEST_UNKNOWN", 404),
        id="conformance-nonexistent-manifest",
    ),
    pytest.param(
        Answer("HEAD", "/v2/a/manifests/.bad", "", 404, "MANIFEST_UNKNOWN", 404), id="head-tag"
    ),
    pytest.param(
        Answer("PUT", f"/v2/a/manifests/{'t' * 129}", "", 404, "MANIFEST_UNKNOWN", 404),
        id="put-tag-129",
    ),
    pytest.param(
        Answer("DELETE", "/v2/a/manifests/-x", "", 404, "MANIFEST_UNKNOWN", 404), id="delete-tag"
    ),
    pytest.param(
        Answer("GET", "/v2/a/manifests/lat%65st", "", 404, "MANIFEST_UNKNOWN", 404), id="enc-tag"
    ),
    # A blob or upload reference outside its grammar: 404 as the registry.
    pytest.param(Answer("GET", "/v2/a/blobs/latest", "", 404, "BLOB_UNKNOWN", 404), id="blob-tag"),
    pytest.param(Answer("DELETE", "/v2/a/blobs/", "", 404, "BLOB_UNKNOWN", 404), id="blob-empty"),
    pytest.param(
        Answer("PATCH", "/v2/a/blobs/uploads/.x", "", 404, "BLOB_UPLOAD_UNKNOWN", 404),
        id="upload-id",
    ),
    pytest.param(
        Answer("GET", "/v2/a/blobs/uploads/id;x", "", 404, "BLOB_UPLOAD_UNKNOWN", 404),
        id="upload-id-semicolon",
    ),
    # A known algorithm's digest with a wrong encoding: DIGEST_INVALID, as the registry answers
    # for blobs; for manifests it fails with 500 (the conformance suite's "400 response body"
    # test). The referrers API must answer 400 to any invalid digest; 2.8 does not have it.
    pytest.param(
        Answer("GET", "/v2/a/manifests/sha256:totallywrong", "", 400, "DIGEST_INVALID", 500),
        id="conformance-manifest-digest",
    ),
    pytest.param(
        Answer("HEAD", "/v2/a/blobs/sha256:abc", "", 400, "DIGEST_INVALID", 400), id="blob-short"
    ),
    pytest.param(
        Answer("GET", f"/v2/a/blobs/sha512:{'ab' * 32}", "", 400, "DIGEST_INVALID", 400),
        id="blob-sha512-short",
    ),
    pytest.param(
        Answer("GET", "/v2/a/referrers/latest", "", 400, "DIGEST_INVALID", 404), id="referrers"
    ),
    # A method the endpoint does not have: 405 with Allow, as the registry; also for methods
    # outside the spec that the registry answers 200 without doing anything.
    pytest.param(Answer("POST", "/v2/a/manifests/x", "", 405, "UNSUPPORTED", 405), id="post-tag"),
    pytest.param(Answer("PUT", f"/v2/a/blobs/{DIGEST}", "", 405, "UNSUPPORTED", 405), id="put"),
    pytest.param(Answer("DELETE", "/v2/a/tags/list", "", 405, "UNSUPPORTED", 405), id="del-tags"),
    pytest.param(Answer("HEAD", "/v2/_catalog", "", 405, "UNSUPPORTED", 405), id="head-catalog"),
    pytest.param(Answer("GET", "/v2/a/blobs/uploads/", "", 405, "UNSUPPORTED", 404), id="get-up"),
    pytest.param(Answer("POST", "/v2/", "", 405, "UNSUPPORTED", 200), id="post-ping"),
    pytest.param(Answer("OPTIONS", "/v2/a/manifests/x", "", 405, "UNSUPPORTED", 200), id="options"),
    # Repeated parameters the registry reads the first of: refused rather than guessed.
    pytest.param(
        Answer("POST", "/v2/a/blobs/uploads/", f"mount={DIGEST}&from=b&from=c", 400,
               "UNSUPPORTED", 202),
        id="repeated-from",
    ),
]  # fmt: skip
# The catalog (not in the spec; regproxy pages it itself, after authentication): what it
# cannot page exactly. Checked through the proxy (tests/test_handler.py, tests/e2e).
CATALOG_REFUSALS = [
    pytest.param(
        Answer("GET", "/v2/_catalog", "n=1001", 400, "PAGINATION_NUMBER_INVALID", 400), id="n-big"
    ),
    pytest.param(
        Answer("GET", "/v2/_catalog", "n=0", 400, "PAGINATION_NUMBER_INVALID", 200), id="n-zero"
    ),
    pytest.param(
        Answer("GET", "/v2/_catalog", "last=A", 400, "NAME_INVALID", 200), id="last-invalid"
    ),
]


@pytest.mark.parametrize("answer", REFUSALS)
def test_refusals(answer: Answer) -> None:
    result = classify(answer.method, answer.path, answer.query)
    assert isinstance(result, Refusal)
    assert (result.status, result.code, bool(result.allow)) == (
        answer.status,
        answer.code,
        answer.status == 405,
    )


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        pytest.param("GET", "/v2/_catalog", "n=10&last=a", Operation("catalog", None), id="cat-q"),
        pytest.param(
            "GET", "/v2/a/tags/list", "n=5&last=v1", Operation("tags", "pull", "a"), id="tags-q"
        ),
        pytest.param(
            "POST", "/v2/a/blobs/uploads/", f"digest={DIGEST}",
            Operation("upload-start", "push", "a"), id="monolithic-upload",
        ),
        pytest.param(
            "POST", "/v2/a/blobs/uploads/", "",
            Operation("upload-start", "push", "a"), id="no-query",
        ),
        pytest.param(
            "POST", "/v2/a/blobs/uploads/", f"mount={DIGEST}&from=other/repo",
            Operation("upload-start", "push", "a", None, "other/repo"), id="mount",
        ),
        pytest.param(
            "POST", "/v2/a/blobs/uploads/", f"from=other/repo&mount={DIGEST}",
            Operation("upload-start", "push", "a", None, "other/repo"), id="mount-reordered",
        ),
        pytest.param(
            "POST", "/v2/a/blobs/uploads/", f"mount={DIGEST}&from=other%2Frepo",
            Operation("upload-start", "push", "a", None, "other/repo"),
            id="mount-from-decoded-like-the-registry",
        ),
        pytest.param(
            "POST", "/v2/a/blobs/uploads/", f"mount=sha256%3A{'ab' * 32}&from=other/repo",
            Operation("upload-start", "push", "a", None, "other/repo"),
            id="mount-digest-decoded-like-the-registry",
        ),
        pytest.param(
            "POST", "/v2/a/blobs/uploads/", f"mount={DIGEST}&from=other/repo&FROM=x",
            Operation("upload-start", "push", "a", None, "other/repo"),
            id="keys-case-sensitive",
        ),
        pytest.param(
            "POST", "/v2/a/blobs/uploads/", "from=other/repo",
            Operation("upload-start", "push", "a"), id="from-without-mount-ignored",
        ),
        pytest.param(
            "GET", "/v2/a/manifests/latest", "mount=x&mount=y&from=A",
            Operation("manifest", "pull", "a", "latest"), id="query-only-matters-for-uploads",
        ),
        pytest.param(
            "PATCH", f"/v2/a/blobs/uploads/{UPLOAD_ID}", "_state=abc%3D%3D&from=x&from=y",
            Operation("upload", "push", "a", UPLOAD_ID), id="upload-state-query",
        ),
    ],
)  # fmt: skip
def test_classify_with_query(method: str, path: str, query: str, expected: Operation) -> None:
    assert classify(method, path, query) == expected


@pytest.mark.parametrize(
    ("query", "code", "match"),
    [
        # Go's url.ParseQuery skips a pair with ';' or a bad escape (an error FormValue
        # ignores) where Python keeps it: such queries are refused, whatever the pair.
        pytest.param(
            f"mount={DIGEST}&from=a;from=b", "UNSUPPORTED", "read differently", id="semicolon"
        ),
        pytest.param(f"mount={DIGEST};x&from=a", "UNSUPPORTED", "read differently", id="semi-2"),
        pytest.param(f"mount={DIGEST}&from=a%zz", "UNSUPPORTED", "read differently", id="bad-%"),
        pytest.param(f"mount={DIGEST}&from=a&x=%", "UNSUPPORTED", "read differently", id="lone-%"),
        pytest.param(f"digest={DIGEST}&x=%4", "UNSUPPORTED", "read differently", id="short-%"),
        pytest.param(
            f"mount={DIGEST}&from=a&from=b", "UNSUPPORTED", "repeated query parameter 'from'",
            id="repeated-from",
        ),
        pytest.param(
            f"mount={DIGEST}&from=a&%66rom=b", "UNSUPPORTED", "repeated query parameter 'from'",
            id="repeated-from-encoded-key",
        ),
        pytest.param(
            f"mount={DIGEST}&from=a&from=a", "UNSUPPORTED", "repeated query parameter 'from'",
            id="repeated-from-same-value",
        ),
        pytest.param(
            f"mount={DIGEST}&mount={DIGEST2}&from=a", "UNSUPPORTED",
            "repeated query parameter 'mount'", id="repeated-mount",
        ),
        pytest.param(
            f"digest={DIGEST}&digest={DIGEST2}", "UNSUPPORTED",
            "repeated query parameter 'digest'", id="repeated-digest",
        ),
        pytest.param(
            "from=a&from=b", "UNSUPPORTED", "repeated query parameter 'from'",
            id="repeated-from-without-mount",
        ),
    ],
)  # fmt: skip
def test_upload_start_query_refusals(query: str, code: str, match: str) -> None:
    result = classify("POST", "/v2/a/blobs/uploads/", query)
    assert isinstance(result, Refusal)
    assert (result.status, result.code) == (400, code)
    assert match in result.message


@pytest.mark.parametrize(
    "query",
    [
        pytest.param(f"mount={DIGEST}", id="mount-without-from"),
        pytest.param(f"mount={DIGEST}&from=", id="empty-from"),
        pytest.param(f"from=&mount={DIGEST}&digest={DIGEST2}", id="empty-from-with-digest"),
        pytest.param(f"mount={DIGEST}&from=Other/Repo", id="uppercase"),
        pytest.param(f"mount={DIGEST}&from=a/../b", id="dotdot"),
        pytest.param(f"mount={DIGEST}&from=a%2F..%2Fb", id="enc-dotdot"),
        pytest.param(f"mount={DIGEST}&from=a//b", id="empty-segment"),
        pytest.param(f"mount={DIGEST}&from=/a", id="leading-slash"),
        pytest.param(f"mount={DIGEST}&from=a+b", id="plus-is-space"),
        pytest.param(f"mount={DIGEST}&from=%D0%B0", id="cyrillic-a"),
        pytest.param(f"mount={DIGEST}&from=" + "a" * (NAME_MAX + 1), id="from-too-long"),
        pytest.param("mount=&from=other/repo", id="empty-mount"),
        pytest.param("mount=latest&from=other/repo", id="mount-not-a-digest"),
        pytest.param("mount=sha256:abc&from=other/repo", id="mount-short-sha256"),
    ],
)
def test_mount_without_a_usable_source_becomes_an_ordinary_upload(query: str) -> None:
    """The spec: a registry may treat `from` as optional (and look for the blob anywhere) and
    starts an ordinary upload when it cannot mount. Forwarded without the mount parameters, so
    no registry picks a source the caller may not read and nothing malformed goes upstream."""
    result = classify("POST", "/v2/a/blobs/uploads/", query)
    assert result == Operation("upload-start", "push", "a", None, None, drop_mount=True)
    assert "mount" not in without_mount(query) and "from" not in without_mount(query)


def test_mount_from_at_the_length_limit() -> None:
    name = "a" * NAME_MAX
    assert classify("POST", "/v2/a/blobs/uploads/", f"mount={DIGEST}&from={name}") == Operation(
        "upload-start", "push", "a", None, name
    )


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/",
        "/v2foo",
        "/v2foo/",
        "/v2-",
        "/V2/",
        "/v1/",
        "/v1/_ping",
        "/v1/repositories/a/tags",
        "v2/",
        "//v2/",
        "/v2//",
        "/v2/_catalog/",
        "/v2/%5Fcatalog",
        "/v2/a",
        "/v2/a/b/c",
        "/v2/a/unknown/x",
        "/v2/a/manifests",
        "/v2/a/manifests/latest/extra",
        "/v2/a/blobs",
        "/v2/a/tags",
        "/v2/a/tags/list/",
        "/v2/a/tags/lists",
        "/v2/a/referrers",
        f"/v2/a/referrers/{DIGEST}/x",
        f"/v2/a/blobs/uploads/{UPLOAD_ID}/x",
        "/v2/a/_catalog",
    ],
)
@pytest.mark.parametrize("method", ["GET", "OPTIONS"])
def test_not_found(method: str, path: str) -> None:
    result = classify(method, path)
    assert isinstance(result, Refusal)
    assert (result.status, result.code) == (404, "UNSUPPORTED")  # a code the spec lists


BAD_NAMES = [
    pytest.param("Upper", id="uppercase"),
    pytest.param("a/B", id="uppercase-component"),
    pytest.param("a%2Fb", id="encoded-slash"),
    pytest.param("a%2fb", id="encoded-slash-lower"),
    pytest.param("%61", id="encoded-letter"),
    pytest.param("%2e%2e/a", id="encoded-dotdot"),
    pytest.param("a/%2e%2e/b", id="encoded-dotdot-inner"),
    pytest.param("a/%2E%2E/b", id="encoded-dotdot-upper"),
    pytest.param("a/../b", id="dotdot"),
    pytest.param("../a", id="leading-dotdot"),
    pytest.param("a/..", id="trailing-dotdot"),
    pytest.param("a/./b", id="dot"),
    pytest.param("./a", id="leading-dot"),
    pytest.param("a//b", id="empty-segment"),
    pytest.param("/a", id="leading-slash"),
    pytest.param("a/", id="trailing-slash"),
    pytest.param("a;x=y", id="semicolon-param"),
    pytest.param("a/b;p/c", id="semicolon-inner"),
    pytest.param("\uff41", id="fullwidth-a"),
    pytest.param("lib\uff52ary/a", id="fullwidth-in-word"),
    pytest.param("\u0430", id="cyrillic-a"),
    pytest.param("libr\u0430ry/ubuntu", id="cyrillic-in-word"),
    pytest.param("a\u0307", id="combining-mark"),
    pytest.param("\u0131", id="dotless-i"),
    pytest.param("a b", id="space"),
    pytest.param("a%20b", id="encoded-space"),
    pytest.param("a\tb", id="tab"),
    pytest.param("-a", id="leading-dash"),
    pytest.param("a-", id="trailing-dash"),
    pytest.param("_a", id="leading-underscore"),
    pytest.param("a.", id="trailing-dot"),
    pytest.param("a..b", id="double-dot-separator"),
    pytest.param("a._b", id="mixed-separators"),
    pytest.param("a___b", id="triple-underscore"),
    pytest.param("a:b", id="colon"),
    pytest.param("a@b", id="at"),
    pytest.param("a~b", id="tilde"),
    pytest.param("a" * (NAME_MAX + 1), id="256-chars"),
    pytest.param("a/" * 127 + "ab", id="256-chars-multi"),
]


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize(
    ("method", "template"),
    [
        ("GET", "/v2/{}/manifests/latest"),
        ("PUT", "/v2/{}/manifests/" + DIGEST),
        ("HEAD", "/v2/{}/blobs/" + DIGEST),
        ("POST", "/v2/{}/blobs/uploads/"),
        ("PATCH", "/v2/{}/blobs/uploads/" + UPLOAD_ID),
        ("GET", "/v2/{}/tags/list"),
        ("GET", "/v2/{}/referrers/" + DIGEST),
    ],
)
def test_name_invalid(method: str, template: str, name: str) -> None:
    result = classify(method, template.format(name))
    assert isinstance(result, Refusal)
    assert (result.status, result.code) == (400, "NAME_INVALID")


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "0",
        "a/b/c",
        "library/ubuntu",
        "a.b",
        "a_b",
        "a__b",
        "a-b",
        "a--b",
        "a-b-c",
        "a.b-c_d__e/f",
        "manifests",
        "blobs/uploads",
        "tags/list",
        "v2",
        "catalog",
        "a" * NAME_MAX,
        "a/" * 127 + "a",
        ("ab/" * 85)[:-1],
    ],
)
def test_valid_names(name: str) -> None:
    assert len(name) <= NAME_MAX
    assert classify("GET", f"/v2/{name}/manifests/latest") == Operation(
        "manifest", "pull", name, "latest"
    )
    assert classify("POST", f"/v2/{name}/blobs/uploads/") == Operation("upload-start", "push", name)
    assert classify("GET", f"/v2/{name}/tags/list") == Operation("tags", "pull", name)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        pytest.param(
            "GET", "/v2/a/manifests/b/manifests/latest",
            Operation("manifest", "pull", "a/manifests/b", "latest"), id="manifests-component",
        ),
        pytest.param(
            "GET", "/v2/manifests/manifests/manifests",
            Operation("manifest", "pull", "manifests", "manifests"), id="all-manifests",
        ),
        pytest.param(
            "GET", f"/v2/a/blobs/uploads/blobs/{DIGEST}",
            Operation("blob", "pull", "a/blobs/uploads", DIGEST), id="blobs-uploads-component",
        ),
        pytest.param(
            "POST", "/v2/x/blobs/uploads/blobs/uploads/",
            Operation("upload-start", "push", "x/blobs/uploads"), id="nested-upload-start",
        ),
        pytest.param(
            "PUT", f"/v2/x/blobs/blobs/uploads/{UPLOAD_ID}",
            Operation("upload", "push", "x/blobs", UPLOAD_ID), id="nested-upload",
        ),
        pytest.param(
            "POST", "/v2/a/manifests/blobs/uploads/",
            Operation("upload-start", "push", "a/manifests"), id="upload-start-manifests",
        ),
        pytest.param(
            "GET", "/v2/x/tags/tags/list",
            Operation("tags", "pull", "x/tags"), id="tags-component",
        ),
        pytest.param(
            "GET", f"/v2/r/referrers/referrers/{DIGEST}",
            Operation("referrers", "pull", "r/referrers", DIGEST), id="referrers-component",
        ),
        pytest.param(
            "DELETE", "/v2/a/b/manifests/tags",
            Operation("manifest", "delete", "a/b", "tags"), id="tag-named-tags",
        ),
    ],
)  # fmt: skip
def test_keyword_components(method: str, path: str, expected: Operation) -> None:
    assert classify(method, path) == expected


NO_MANIFEST = (404, "MANIFEST_UNKNOWN")
NO_BLOB = (404, "BLOB_UNKNOWN")
NO_UPLOAD = (404, "BLOB_UPLOAD_UNKNOWN")
BAD_DIGEST = (400, "DIGEST_INVALID")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param("/v2/a/manifests/" + "t" * 129, NO_MANIFEST, id="tag-129"),
        pytest.param("/v2/a/manifests/.hidden", NO_MANIFEST, id="tag-leading-dot"),
        pytest.param("/v2/a/manifests/-dash", NO_MANIFEST, id="tag-leading-dash"),
        pytest.param("/v2/a/manifests/", NO_MANIFEST, id="tag-empty"),
        pytest.param("/v2/a/manifests/lat%65st", NO_MANIFEST, id="tag-percent"),
        pytest.param("/v2/a/manifests/latest;x=1", NO_MANIFEST, id="tag-semicolon"),
        pytest.param("/v2/a/manifests/t\u00e4g", NO_MANIFEST, id="tag-non-ascii"),
        pytest.param("/v2/a/manifests/t\uff41g", NO_MANIFEST, id="tag-fullwidth"),
        pytest.param("/v2/a/manifests/a b", NO_MANIFEST, id="tag-space"),
        pytest.param("/v2/a/manifests/a+b", NO_MANIFEST, id="tag-plus"),
        pytest.param("/v2/a/manifests/latest\n", NO_MANIFEST, id="tag-newline"),
        pytest.param("/v2/a/manifests/sha256:", NO_MANIFEST, id="manifest-digest-empty"),
        pytest.param("/v2/a/manifests/SHA256:abc", NO_MANIFEST, id="manifest-digest-upper"),
        pytest.param("/v2/a/manifests/sha256%3Aabc", NO_MANIFEST, id="manifest-digest-enc"),
        pytest.param("/v2/a/blobs/latest", NO_BLOB, id="blob-tag"),
        pytest.param("/v2/a/blobs/", NO_BLOB, id="blob-empty"),
        pytest.param("/v2/a/blobs/uploads", NO_BLOB, id="uploads-no-slash"),
        pytest.param("/v2/a/blobs/sha256:", NO_BLOB, id="blob-no-hex"),
        pytest.param("/v2/a/blobs/:abc", NO_BLOB, id="blob-no-algorithm"),
        pytest.param("/v2/a/blobs/SHA256:abc", NO_BLOB, id="blob-upper-algorithm"),
        pytest.param("/v2/a/blobs/sha256:ab+cd", NO_BLOB, id="blob-plus-in-hex"),
        pytest.param("/v2/a/blobs/sha256:ab:cd", NO_BLOB, id="blob-two-colons"),
        pytest.param("/v2/a/blobs/sha256%3Aabcd", NO_BLOB, id="blob-encoded-colon"),
        pytest.param("/v2/a/blobs/sha256:ab%2Fcd", NO_BLOB, id="blob-encoded-slash"),
        pytest.param("/v2/a/blobs/sha256:abcd;x", NO_BLOB, id="blob-semicolon"),
        pytest.param("/v2/a/blobs/-sha256:abcd", NO_BLOB, id="blob-leading-dash"),
        pytest.param("/v2/a/referrers/latest", BAD_DIGEST, id="referrers-tag"),
        pytest.param("/v2/a/referrers/", BAD_DIGEST, id="referrers-empty"),
        pytest.param("/v2/a/blobs/uploads/-x", NO_UPLOAD, id="upload-id-dash"),
        pytest.param("/v2/a/blobs/uploads/.x", NO_UPLOAD, id="upload-id-dot"),
        pytest.param("/v2/a/blobs/uploads/" + "u" * 257, NO_UPLOAD, id="upload-id-257"),
        pytest.param("/v2/a/blobs/uploads/id%2F", NO_UPLOAD, id="upload-id-percent"),
        pytest.param("/v2/a/blobs/uploads/id;x", NO_UPLOAD, id="upload-id-semicolon"),
        pytest.param("/v2/a/manifests/.INVALID_MANIFEST_NAME", NO_MANIFEST, id="conformance"),
        pytest.param("/v2/a/manifests/sha256:totallywrong", BAD_DIGEST, id="manifest-not-hex"),
        pytest.param(f"/v2/a/manifests/sha256:{'AB' * 32}", BAD_DIGEST, id="manifest-upper-hex"),
        pytest.param("/v2/a/blobs/sha256:abcd", BAD_DIGEST, id="blob-sha256-short"),
        pytest.param(f"/v2/a/blobs/sha256:{'ab' * 33}", BAD_DIGEST, id="blob-sha256-long"),
        pytest.param(f"/v2/a/blobs/sha512:{'ab' * 32}", BAD_DIGEST, id="blob-sha512-short"),
        pytest.param(f"/v2/a/blobs/sha384:{'ab' * 32}", BAD_DIGEST, id="blob-sha384-short"),
        pytest.param("/v2/a/referrers/sha256:abc", BAD_DIGEST, id="referrers-sha256-short"),
    ],
)  # fmt: skip
def test_reference_invalid(path: str, expected: tuple[int, str]) -> None:
    """Neither tag nor digest names nothing that can exist: "not found" in the spec's words
    (the referrers API must say 400); a known algorithm's digest with a wrong encoding is
    DIGEST_INVALID."""
    result = classify("GET", path)
    assert isinstance(result, Refusal)
    assert (result.status, result.code) == expected


@pytest.mark.parametrize(
    ("path", "reference"),
    [
        ("/v2/a/manifests/" + "t" * 128, "t" * 128),
        ("/v2/a/manifests/_under", "_under"),
        ("/v2/a/manifests/A.B-c_d", "A.B-c_d"),
        ("/v2/a/manifests/0", "0"),
        ("/v2/a/manifests/v1.2.3-rc.1", "v1.2.3-rc.1"),
        (f"/v2/a/manifests/{DIGEST2}", DIGEST2),
        ("/v2/a/manifests/sha256+b64u:abc=_-", "sha256+b64u:abc=_-"),
        ("/v2/a/blobs/sha256+b64u:abc=_-", "sha256+b64u:abc=_-"),
        ("/v2/a/blobs/multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8", None),
        ("/v2/a/blobs/uploads/" + "u" * 256, "u" * 256),
        ("/v2/a/blobs/uploads/Ab0._=-x", "Ab0._=-x"),
        (f"/v2/a/blobs/sha384:{'0f' * 48}", None),
        (f"/v2/a/referrers/sha512:{'0f' * 64}", None),
        ("/v2/a/blobs/sha1:abc", None),  # an algorithm the proxy does not know: the registry's call
        ("/v2/a/manifests/sha256x:ABC", None),
    ],
)
def test_reference_valid(path: str, reference: str | None) -> None:
    result = classify("GET", path)
    assert isinstance(result, Operation)
    assert result.repository == "a"
    assert result.reference == (reference or path.rsplit("/", 1)[1])


def test_bad_name_reported_before_bad_method() -> None:
    result = classify("OPTIONS", "/v2/A/manifests/latest")
    assert isinstance(result, Refusal) and result.code == "NAME_INVALID"
    result = classify("OPTIONS", "/v2/a/manifests/.bad")
    assert isinstance(result, Refusal) and result.code == "MANIFEST_UNKNOWN"


def test_query_checked_only_for_allowed_methods() -> None:
    result = classify("GET", "/v2/a/blobs/uploads/", "from=a&from=b")
    assert isinstance(result, Refusal) and result.status == 405


# --------------------------------------------------------------------------------------------
# without_mount
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ""),
        (f"mount={DIGEST}&from=a", ""),
        (f"mount={DIGEST}&from=a&digest={DIGEST}", f"digest={DIGEST}"),
        ("a=%2F&mount=x&%66rom=y&b=1", "a=%2F&b=1"),
        ("mount&from", ""),
        ("&&x=1&&", "x=1"),
        ("mounted=1&fromage=2", "mounted=1&fromage=2"),
        ("x=mount&y=from", "x=mount&y=from"),
    ],
)
def test_without_mount(query: str, expected: str) -> None:
    assert without_mount(query) == expected


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

_PIECES = st.sampled_from(
    [
        "a",
        "b",
        "lib",
        "manifests",
        "blobs",
        "uploads",
        "tags",
        "list",
        "referrers",
        "_catalog",
        "latest",
        DIGEST,
        UPLOAD_ID,
        "",
        ".",
        "..",
        "%2F",
        "%2e%2e",
        "%2E",
        "A",
        "\uff41",
        "\u0430",
        ";x",
        "a;b",
        "a.b",
        "a__b",
        "a-b",
        "v2",
        "?",
        "#",
        "\x00",
        "\n",
    ]
)
_PATHS = st.one_of(
    st.text(),
    st.text().map(lambda t: "/v2/" + t),
    st.lists(_PIECES, max_size=8).map(lambda parts: "/v2/" + "/".join(parts)),
    st.lists(st.one_of(_PIECES, st.text(max_size=5)), max_size=8).map(
        lambda parts: "/v2/" + "/".join(parts)
    ),
)
_METHODS = st.one_of(st.sampled_from(ALL_METHODS), st.text(max_size=8))
_QUERIES = st.one_of(
    st.text(),
    st.lists(
        st.tuples(
            st.sampled_from(["mount", "from", "digest", "%66rom", "n", "last", "x"]),
            st.one_of(st.sampled_from(["a", "a/b", "A", "a/../b", "a%2Fb", DIGEST, ""]),
                      st.text(max_size=6)),
        ),
        max_size=4,
    ).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs)),
)  # fmt: skip


@settings(deadline=None)
@given(method=_METHODS, path=_PATHS, query=_QUERIES)
def test_classify_never_raises_and_names_are_safe(method: str, path: str, query: str) -> None:
    result = classify(method, path, query)
    assert isinstance(result, Operation | Refusal)
    if isinstance(result, Refusal):
        assert result.status in (400, 404, 405)
        assert bool(result.allow) is (result.status == 405)
        return
    assert path == "/v2" or path.startswith("/v2/")
    if result.drop_mount:  # what goes upstream then has no mount at all
        assert result.mount_from is None
        assert not {k for k, _ in parse_qsl(without_mount(query))} & {"mount", "from"}
    for name in (result.repository, result.mount_from):
        if name is None:
            continue
        assert NAME_RE.fullmatch(name)
        assert len(name) <= NAME_MAX
        assert "%" not in name and ".." not in name and "//" not in name
        assert name.isascii() and name == name.lower()
    if result.repository is None:
        assert result.kind in ("ping", "catalog")
    else:
        assert path.startswith(f"/v2/{result.repository}/")
    if result.reference is not None:
        assert "/" not in result.reference and "%" not in result.reference
        assert path.endswith("/" + result.reference)
    assert result.action in (None, "pull", "push", "delete")


_ALNUM = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
_COMPONENTS = st.one_of(
    st.builds(
        lambda first, rest: first + "".join(sep + part for sep, part in rest),
        _ALNUM,
        st.lists(st.tuples(st.sampled_from([".", "_", "__", "-", "--", "---"]), _ALNUM),
                 max_size=3),
    ),
    st.sampled_from(["manifests", "blobs", "uploads", "tags", "list", "referrers", "v2"]),
)  # fmt: skip
_NAMES = (
    st.lists(_COMPONENTS, min_size=1, max_size=6).map("/".join).filter(lambda n: len(n) <= NAME_MAX)
)
_TAGS = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from("abcXYZ019_"),
    st.text(alphabet="abcXYZ019._-", max_size=127),
)
_DIGESTS = st.one_of(
    st.builds(
        lambda algorithm, encoded: f"{algorithm}:{encoded}",
        st.sampled_from(["sha256+b64u", "multihash.v1", "a_b-c", "sha1", "sha256x"]),
        st.text(alphabet="0123456789abcdefABCDEF=_-", min_size=1, max_size=64),
    ),
    st.builds(
        lambda algorithm, encoded: (
            f"{algorithm}:{encoded[: {'sha256': 64, 'sha384': 96}.get(algorithm, 128)]}"
        ),
        st.sampled_from(["sha256", "sha384", "sha512"]),
        st.text(alphabet="0123456789abcdef", min_size=128, max_size=128),
    ),
)


@settings(deadline=None)
@given(name=_NAMES, tag=_TAGS, digest=_DIGESTS)
def test_valid_names_and_references_round_trip(name: str, tag: str, digest: str) -> None:
    assert classify("GET", f"/v2/{name}/manifests/{tag}") == Operation(
        "manifest", "pull", name, tag
    )
    assert classify("PUT", f"/v2/{name}/manifests/{digest}") == Operation(
        "manifest", "push", name, digest
    )
    assert classify("HEAD", f"/v2/{name}/blobs/{digest}") == Operation("blob", "pull", name, digest)
    assert classify("DELETE", f"/v2/{name}/blobs/{digest}") == Operation(
        "blob", "delete", name, digest
    )
    assert classify("POST", f"/v2/{name}/blobs/uploads/") == Operation("upload-start", "push", name)
    mount = digest.replace("+", "%2B")  # in a query, "+" is a space (to the registry too)
    assert classify("POST", f"/v2/{name}/blobs/uploads/", f"mount={mount}&from={name}") == (
        Operation("upload-start", "push", name, None, name)
    )
    assert classify("PATCH", f"/v2/{name}/blobs/uploads/{UPLOAD_ID}") == Operation(
        "upload", "push", name, UPLOAD_ID
    )
    assert classify("GET", f"/v2/{name}/tags/list") == Operation("tags", "pull", name)
    assert classify("GET", f"/v2/{name}/referrers/{digest}") == Operation(
        "referrers", "pull", name, digest
    )


# The endpoint shapes as regular expressions, the way distribution's router writes them: the
# reference model for the classifier's suffix dispatch.
_SHAPES = (
    ("manifest", re.compile(r"/v2/(?P<name>.+)/manifests/(?P<ref>[^/]*)", re.DOTALL)),
    ("upload-start", re.compile(r"/v2/(?P<name>.+)/blobs/uploads/", re.DOTALL)),
    ("upload", re.compile(r"/v2/(?P<name>.+)/blobs/uploads/(?P<ref>[^/]*)", re.DOTALL)),
    ("blob", re.compile(r"/v2/(?P<name>.+)/blobs/(?P<ref>[^/]*)", re.DOTALL)),
    ("tags", re.compile(r"/v2/(?P<name>.+)/tags/list", re.DOTALL)),
    ("referrers", re.compile(r"/v2/(?P<name>.+)/referrers/(?P<ref>[^/]*)", re.DOTALL)),
)


def _shape(path: str) -> tuple[str, str, str | None] | None:
    for kind, pattern in _SHAPES:
        match = pattern.fullmatch(path)
        if match is not None:
            return kind, match.group("name"), match.groupdict().get("ref")
    return None


@settings(deadline=None, max_examples=1000)
@given(path=_PATHS)
@example(path="/v2//manifests/x")
@example(path="/xx/a/manifests/latest")
@example(path="/v2/blobs/uploads/")
@example(path="/v2/a/blobs/uploads/")
@example(path="/v2/a/manifests/blobs/uploads/")
@example(path="/v2/a/tags/list/")
def test_endpoints_are_the_routers_shapes(path: str) -> None:
    if path in ("/v2", "/v2/", "/v2/_catalog"):
        return
    shape = _shape(path)
    found = _endpoint(path)
    if shape is None:
        assert found == Refusal(404, "UNSUPPORTED", "no such registry endpoint")
    elif isinstance(found, Refusal):  # the right shape, with a name or reference refused
        assert found.code != "UNSUPPORTED"
        assert (found.code == "NAME_INVALID") is (not valid_name(shape[1]))
    else:
        assert found == shape
