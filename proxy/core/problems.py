"""Problems in files as `file:line: message`, the error that carries them, safe reading of a
file a user edits, and the YAML loader: every file reader reports through these, so `check`,
`serve` and a reload word a problem the same way."""

from __future__ import annotations

import grp
import os
import pwd
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MAX_FILE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Problem:
    """One bad line in one file, printed as `source:line: message` (line 0: the whole file)."""

    source: str
    line: int
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """Every problem found while loading, each `file:line: message`."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class BadValue(ValueError):
    """A problem with one key's value, naming the key; the caller makes it a Problem."""


def _owner(st: os.stat_result) -> str:
    try:
        return f"{pwd.getpwuid(st.st_uid).pw_name}:{grp.getgrgid(st.st_gid).gr_name}"
    except KeyError:
        return f"{st.st_uid}:{st.st_gid}"


def permission_hint(path: Path) -> str:
    """What this process lacks to read `path`, with the owner and mode it has now."""
    blocked, need = path, "read"
    for parent in reversed(path.absolute().parents):
        if not os.access(parent, os.X_OK):
            blocked, need = parent, "search (x)"
            break
    try:
        st = blocked.stat()
    except OSError:
        return ""
    uid = os.geteuid()
    return (
        f": uid {uid} (gid {os.getegid()}) needs {need} permission on {blocked} (mode"
        f" {stat.S_IMODE(st.st_mode):04o}, owner {_owner(st)}): grant it to a group uid {uid} is"
        " in, or give regproxy CAP_DAC_READ_SEARCH"
    )


def cannot_read(path: Path, exc: OSError) -> Problem:
    """An OSError from reading `path`, naming the file and, for EACCES, what is missing."""
    hint = permission_hint(path) if isinstance(exc, PermissionError) else ""
    return Problem(str(path), 0, f"cannot read: {exc.strerror or exc}{hint}")


def read_text(path: Path) -> str:
    """A whole file as UTF-8; ConfigError (file:line) if unreadable, binary or huge."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError([cannot_read(path, exc)]) from None
    except ValueError:  # a NUL in the name: no file can have it
        raise ConfigError([Problem(str(path), 0, "cannot read: NUL byte in the name")]) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError([Problem(str(path), 0, f"larger than {MAX_FILE_BYTES} bytes")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError([Problem(str(path), line, "not UTF-8 text")]) from None
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        raise ConfigError([Problem(str(path), line, "binary data (NUL byte)")])
    return text


# libyaml's parser keeps every node's line as the pure one does, ten times faster (a
# 10,000-rule ACL is read at start and at each reload).
_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def compose_yaml(text: str, source: str) -> yaml.Node | None:
    """The YAML node tree of `text` (None when empty), every node with its line."""
    try:
        return yaml.compose(text, Loader=_FAST_LOADER)
    except yaml.YAMLError:
        pass
    # The pure-Python parser says where and why in the words `yaml_problem` reads: the
    # C one is only the fast way through a good file.
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError([yaml_problem(exc, text, source)]) from None


def release(node: yaml.Node | None, levels: int = 2) -> None:
    """Drop a node tree piece by piece, each entry of the top `levels` levels on its own (an
    ACL's rules one by one); the tree must not be used afterwards."""
    # Freed at once, the tree of a 10,000-rule file is one deallocation cascade holding the
    # interpreter lock for tens of milliseconds, stalling the event loop while a reload
    # thread parses; taken apart, the loop gets the lock between pieces. Below the top
    # levels an entry (a rule, its lists of names) is small: taking it apart too would cost
    # more than it frees.
    if not isinstance(node, yaml.CollectionNode):
        return
    children, node.value = node.value, []
    while children:
        child = children.pop()  # freed here, with what is left of it
        if levels > 1:
            for part in child if isinstance(child, tuple) else (child,):
                release(part, levels - 1)


# Parser contexts whose mark is where the cause is: something opened there and never closed.
_OPENED = {
    "while parsing a flow sequence": "a '[' opened on this line is not closed",
    "while parsing a flow mapping": "a '{' opened on this line is not closed",
    "while scanning a quoted scalar": "a quote opened on this line is not closed",
    "while scanning a simple key": "a key on this line has no ':'",
}


def _run_on_start(text: str, line: int) -> int:
    """The line where a plain value that ran on into `line` began, else `line`."""
    start = line
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, yaml.ScalarToken):
                start = token.start_mark.line + 1
    except yaml.YAMLError:
        pass
    return start if start < line else line


def yaml_problem(exc: yaml.YAMLError, text: str, source: str) -> Problem:
    """A YAML syntax error at the line that causes it, not where the parser gave up."""
    problem = str(getattr(exc, "problem", None) or exc)
    mark = getattr(exc, "problem_mark", None)
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else 0
    if context in _OPENED and context_mark is not None:
        cause = context_mark.line + 1
        return Problem(source, cause, f"invalid YAML: {_OPENED[context]} ({problem})")
    if mark is not None and mark.index >= len(text.rstrip()):
        last = len(text.rstrip().split("\n"))
        return Problem(source, last, f"invalid YAML: the file ends early ({problem})")
    if problem == "mapping values are not allowed here":
        start = _run_on_start(text, line)
        if start != line:
            why = f"a value starts here and runs on into line {line} (a ':' missing, or the"
            return Problem(source, start, f"invalid YAML: {why} indentation of line {line}?)")
    if problem.startswith("but ") and context:
        problem = f"{context}, {problem}"  # "expected a single document ..., but found ..."
    return Problem(source, line, f"invalid YAML: {problem}")


_STR = "tag:yaml.org,2002:str"


def construct(node: yaml.Node) -> Any:
    """A node's Python value; unknown tags and bad values (`!!int two`) are ValueErrors."""
    # Text and lists of text (names, globs, actions: most of an ACL) are read directly, as
    # the constructor would read them: a 10,000-rule file has tens of thousands of them.
    if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
        return _own(node.value)
    if isinstance(node, yaml.SequenceNode):
        items = [
            _own(i.value) for i in node.value if isinstance(i, yaml.ScalarNode) and i.tag == _STR
        ]
        if len(items) == len(node.value):
            return items
    try:
        # A constructor alone, not a whole loader: a file's every value is constructed apart.
        return _OwnTexts().construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError) as exc:
        raise ValueError(f"cannot read value: {getattr(exc, 'problem', None) or exc}") from None


class _OwnTexts(yaml.constructor.SafeConstructor):
    """The safe constructor, every text (a mapping's keys too) a copy: see `_own`."""

    def construct_scalar(self, node: yaml.ScalarNode | yaml.MappingNode) -> str:
        return _own(super().construct_scalar(node))


def _own(text: str) -> str:
    """A copy of `text` in memory of its own, not the node tree's."""
    # A text kept from a node lies among the tree's objects, and one kept per block of memory
    # keeps the whole block from going back to the system once the tree is freed: a
    # 10,000-rule ACL then held a worker's 40 MiB where its rules take 14.
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass")


def write_atomically(path: Path, text: str, mode: int = 0o640) -> None:
    """Write-then-rename: readers see the old file or the new one, never half of one."""
    mode = path.stat().st_mode & 0o777 if path.exists() else mode
    fd, tmp = tempfile.mkstemp(dir=path.parent or Path("."), prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
