"""Unit tables for proxy.routes.classify over the OCI distribution spec's endpoints."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.routes import (
    NAME_MAX,
    NAME_RE,
    Operation,
    Refusal,
    catalog_page,
    classify,
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
        pytest.param(f"mount={DIGEST}", "NAME_INVALID", "from", id="mount-without-from"),
        pytest.param(f"mount={DIGEST}&from=", "NAME_INVALID", "from", id="empty-from"),
        pytest.param(f"mount={DIGEST}&from=Other/Repo", "NAME_INVALID", "from", id="uppercase"),
        pytest.param(f"mount={DIGEST}&from=a/../b", "NAME_INVALID", "from", id="dotdot"),
        pytest.param(f"mount={DIGEST}&from=a%2F..%2Fb", "NAME_INVALID", "from", id="enc-dotdot"),
        pytest.param(f"mount={DIGEST}&from=a//b", "NAME_INVALID", "from", id="empty-segment"),
        pytest.param(f"mount={DIGEST}&from=/a", "NAME_INVALID", "from", id="leading-slash"),
        pytest.param(f"mount={DIGEST}&from=a+b", "NAME_INVALID", "from", id="plus-is-space"),
        # Go's url.ParseQuery skips a pair with ';' or a bad escape (an error FormValue
        # ignores) where Python keeps it: such queries are refused, whatever the pair.
        pytest.param(
            f"mount={DIGEST}&from=a;from=b", "UNSUPPORTED", "read differently", id="semicolon"
        ),
        pytest.param(f"mount={DIGEST};x&from=a", "UNSUPPORTED", "read differently", id="semi-2"),
        pytest.param(f"mount={DIGEST}&from=a%zz", "UNSUPPORTED", "read differently", id="bad-%"),
        pytest.param(f"mount={DIGEST}&from=a&x=%", "UNSUPPORTED", "read differently", id="lone-%"),
        pytest.param(f"digest={DIGEST}&x=%4", "UNSUPPORTED", "read differently", id="short-%"),
        pytest.param(f"mount={DIGEST}&from=%D0%B0", "NAME_INVALID", "from", id="cyrillic-a"),
        pytest.param(
            f"mount={DIGEST}&from=" + "a" * (NAME_MAX + 1), "NAME_INVALID", "from", id="too-long"
        ),
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
    assert (result.status, result.code) == (404, "NOT_FOUND")


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


@pytest.mark.parametrize(
    ("path", "code"),
    [
        pytest.param("/v2/a/manifests/" + "t" * 129, "TAG_INVALID", id="tag-129"),
        pytest.param("/v2/a/manifests/.hidden", "TAG_INVALID", id="tag-leading-dot"),
        pytest.param("/v2/a/manifests/-dash", "TAG_INVALID", id="tag-leading-dash"),
        pytest.param("/v2/a/manifests/", "TAG_INVALID", id="tag-empty"),
        pytest.param("/v2/a/manifests/lat%65st", "TAG_INVALID", id="tag-percent"),
        pytest.param("/v2/a/manifests/latest;x=1", "TAG_INVALID", id="tag-semicolon"),
        pytest.param("/v2/a/manifests/t\u00e4g", "TAG_INVALID", id="tag-non-ascii"),
        pytest.param("/v2/a/manifests/t\uff41g", "TAG_INVALID", id="tag-fullwidth"),
        pytest.param("/v2/a/manifests/a b", "TAG_INVALID", id="tag-space"),
        pytest.param("/v2/a/manifests/a+b", "TAG_INVALID", id="tag-plus"),
        pytest.param("/v2/a/manifests/latest\n", "TAG_INVALID", id="tag-newline"),
        pytest.param("/v2/a/manifests/sha256:", "TAG_INVALID", id="manifest-digest-empty"),
        pytest.param("/v2/a/manifests/SHA256:abc", "TAG_INVALID", id="manifest-digest-upper"),
        pytest.param("/v2/a/manifests/sha256%3Aabc", "TAG_INVALID", id="manifest-digest-enc"),
        pytest.param("/v2/a/blobs/latest", "DIGEST_INVALID", id="blob-tag"),
        pytest.param("/v2/a/blobs/", "DIGEST_INVALID", id="blob-empty"),
        pytest.param("/v2/a/blobs/uploads", "DIGEST_INVALID", id="uploads-no-slash"),
        pytest.param("/v2/a/blobs/sha256:", "DIGEST_INVALID", id="blob-no-hex"),
        pytest.param("/v2/a/blobs/:abc", "DIGEST_INVALID", id="blob-no-algorithm"),
        pytest.param("/v2/a/blobs/SHA256:abc", "DIGEST_INVALID", id="blob-upper-algorithm"),
        pytest.param("/v2/a/blobs/sha256:ab+cd", "DIGEST_INVALID", id="blob-plus-in-hex"),
        pytest.param("/v2/a/blobs/sha256:ab:cd", "DIGEST_INVALID", id="blob-two-colons"),
        pytest.param("/v2/a/blobs/sha256%3Aabcd", "DIGEST_INVALID", id="blob-encoded-colon"),
        pytest.param("/v2/a/blobs/sha256:ab%2Fcd", "DIGEST_INVALID", id="blob-encoded-slash"),
        pytest.param("/v2/a/blobs/sha256:abcd;x", "DIGEST_INVALID", id="blob-semicolon"),
        pytest.param("/v2/a/blobs/-sha256:abcd", "DIGEST_INVALID", id="blob-leading-dash"),
        pytest.param("/v2/a/referrers/latest", "DIGEST_INVALID", id="referrers-tag"),
        pytest.param("/v2/a/referrers/", "DIGEST_INVALID", id="referrers-empty"),
        pytest.param("/v2/a/blobs/uploads/-x", "DIGEST_INVALID", id="upload-id-dash"),
        pytest.param("/v2/a/blobs/uploads/.x", "DIGEST_INVALID", id="upload-id-dot"),
        pytest.param("/v2/a/blobs/uploads/" + "u" * 257, "DIGEST_INVALID", id="upload-id-257"),
        pytest.param("/v2/a/blobs/uploads/id%2F", "DIGEST_INVALID", id="upload-id-percent"),
        pytest.param("/v2/a/blobs/uploads/id;x", "DIGEST_INVALID", id="upload-id-semicolon"),
    ],
)
def test_reference_invalid(path: str, code: str) -> None:
    result = classify("GET", path)
    assert isinstance(result, Refusal)
    assert (result.status, result.code) == (400, code)


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
    assert isinstance(result, Refusal) and result.code == "TAG_INVALID"


def test_query_checked_only_for_allowed_methods() -> None:
    result = classify("GET", "/v2/a/blobs/uploads/", "from=a&from=b")
    assert isinstance(result, Refusal) and result.status == 405


# --------------------------------------------------------------------------------------------
# catalog_page and without_mount
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", (100, "")),
        ("n=10", (10, "")),
        ("n=1", (1, "")),
        ("n=1000", (1000, "")),
        ("last=a/b", (100, "a/b")),
        ("n=5&last=library%2Fubuntu", (5, "library/ubuntu")),
        ("last=", (100, "")),
    ],
)
def test_catalog_page(query: str, expected: tuple[int, str]) -> None:
    assert catalog_page(query) == expected


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("n=0", "PAGINATION_NUMBER_INVALID"),
        ("n=1001", "PAGINATION_NUMBER_INVALID"),
        ("n=-1", "PAGINATION_NUMBER_INVALID"),
        ("n=", "PAGINATION_NUMBER_INVALID"),
        ("n=abc", "PAGINATION_NUMBER_INVALID"),
        ("n=1e3", "PAGINATION_NUMBER_INVALID"),
        ("n=+5", "PAGINATION_NUMBER_INVALID"),
        ("n=%C2%B2", "PAGINATION_NUMBER_INVALID"),  # superscript two: isdigit(), not int()
        ("n=%D9%A3", "PAGINATION_NUMBER_INVALID"),  # Arabic-Indic three
        ("n=%EF%BC%91%EF%BC%90", "PAGINATION_NUMBER_INVALID"),  # fullwidth "10"
        ("last=Bad", "NAME_INVALID"),
        ("last=a/../b", "NAME_INVALID"),
    ],
)
def test_catalog_page_refusals(query: str, code: str) -> None:
    result = catalog_page(query)
    assert isinstance(result, Refusal)
    assert (result.status, result.code) == (400, code)


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
        return
    assert path == "/v2" or path.startswith("/v2/")
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
_DIGESTS = st.builds(
    lambda algorithm, encoded: f"{algorithm}:{encoded}",
    st.sampled_from(["sha256", "sha512", "sha256+b64u", "multihash.v1", "a_b-c"]),
    st.text(alphabet="0123456789abcdefABCDEF=_-", min_size=1, max_size=64),
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
    assert classify("POST", f"/v2/{name}/blobs/uploads/", f"mount={digest}&from={name}") == (
        Operation("upload-start", "push", name, None, name)
    )
    assert classify("PATCH", f"/v2/{name}/blobs/uploads/{UPLOAD_ID}") == Operation(
        "upload", "push", name, UPLOAD_ID
    )
    assert classify("GET", f"/v2/{name}/tags/list") == Operation("tags", "pull", name)
    assert classify("GET", f"/v2/{name}/referrers/{digest}") == Operation(
        "referrers", "pull", name, digest
    )
