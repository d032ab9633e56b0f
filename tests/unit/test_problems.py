"""Shared readers (proxy.core.problems): problems as file:line, and safe reading of edited files."""

from __future__ import annotations

import weakref
from pathlib import Path

import pytest
import yaml

from proxy.core.problems import (
    MAX_FILE_BYTES,
    ConfigError,
    Problem,
    compose_yaml,
    read_text,
    release,
)


def write(tmp_path: Path, data: bytes, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_config_error_message_lists_every_problem() -> None:
    error = ConfigError([Problem("a.yaml", 3, "x"), Problem("command line", 0, "y")])
    assert str(error) == "a.yaml:3: x\ncommand line: y"
    assert error.problems == [Problem("a.yaml", 3, "x"), Problem("command line", 0, "y")]


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"", ""),
        (b"alice:x\n", "alice:x\n"),
        (b"a\r\nb\r\n", "a\r\nb\r\n"),
        ("ünïcødé\n".encode(), "ünïcødé\n"),
        (b"no final newline", "no final newline"),
    ],
)
def test_read_text(tmp_path: Path, data: bytes, text: str) -> None:
    assert read_text(write(tmp_path, data, "f")) == text


@pytest.mark.parametrize(
    ("data", "line", "message"),
    [
        pytest.param(b"\x00", 1, "binary data (NUL byte)", id="nul-first"),
        pytest.param(b"a\nb\nc\x00d\n", 3, "binary data (NUL byte)", id="nul-line-3"),
        pytest.param(b"a\r\nb\r\n\r\n\x00", 4, "binary data (NUL byte)", id="nul-crlf"),
        pytest.param(b"\xff", 1, "not UTF-8 text", id="bad-first"),
        pytest.param(b"1\n2\n3\ncaf\xe9\n", 4, "not UTF-8 text", id="latin1-line-4"),
        pytest.param(b"ok\n\xc3", 2, "not UTF-8 text", id="truncated-sequence"),
        pytest.param(b"x\n\xed\xa0\x80\n", 2, "not UTF-8 text", id="encoded-surrogate"),
        pytest.param(b"x\n\xc0\xaf\n", 2, "not UTF-8 text", id="overlong"),
        pytest.param(b"a\n\xff\x00", 2, "not UTF-8 text", id="invalid-before-nul"),
    ],
)
def test_read_text_errors(tmp_path: Path, data: bytes, line: int, message: str) -> None:
    path = write(tmp_path, data, "f")
    with pytest.raises(ConfigError) as info:
        read_text(path)
    assert info.value.problems == [Problem(str(path), line, message)]
    assert str(info.value) == f"{path}:{line}: {message}"


def test_read_text_missing(tmp_path: Path) -> None:
    path = tmp_path / "missing"
    with pytest.raises(ConfigError, match=r"missing: cannot read: No such file or directory"):
        read_text(path)


def test_read_text_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read: Is a directory") as info:
        read_text(tmp_path)
    assert info.value.problems[0].line == 0


def test_read_text_size_limit(tmp_path: Path) -> None:
    at_limit = tmp_path / "at-limit"
    at_limit.write_bytes(b"a" * MAX_FILE_BYTES)
    assert len(read_text(at_limit)) == MAX_FILE_BYTES
    over = tmp_path / "over"
    with over.open("wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)  # sparse: the size check comes before the NULs
    with pytest.raises(ConfigError) as info:
        read_text(over)
    assert info.value.problems == [Problem(str(over), 0, f"larger than {MAX_FILE_BYTES} bytes")]


def test_release_takes_a_node_tree_apart_entry_by_entry() -> None:
    """Every entry is freed as `release` reaches it (none waits for one big cascade at the
    end), and nothing is left behind."""
    node = compose_yaml(
        "acl:\n  - users: [a, b]\n    repositories: ['x/**']\n  - {groups: [g]}\n", "t"
    )
    assert node is not None

    def walk(current: yaml.Node) -> list[yaml.Node]:
        found = [current]
        if isinstance(current, yaml.CollectionNode):
            for child in current.value:
                for item in child if isinstance(child, tuple) else (child,):
                    found.extend(walk(item))
        return found

    refs = [weakref.ref(n) for n in walk(node)]
    assert len(refs) > 10
    release(node)
    assert node.value == []
    assert [r() for r in refs if r() is not None] == [node]  # only the root is still held
    release(None)  # an empty document
