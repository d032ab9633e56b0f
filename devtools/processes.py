"""Processes started here: each in a session of its own, so that its process group is exactly
what it started, and stopped only through the PID it got."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

DEFAULT_TIMEOUT = 120.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
Proc = subprocess.CompletedProcess[str]


class CommandError(RuntimeError):
    """A command failed (with check) or ran out of time."""


class Children:
    """Commands running now, so that all of them can be killed at once (by their groups)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[subprocess.Popen[bytes]] = set()
        self.closed = False

    def add(self, process: subprocess.Popen[bytes]) -> None:
        with self._lock:
            if self.closed:
                kill_group(process)
                raise CommandError("stopping: no new command")
            self._live.add(process)

    def discard(self, process: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._live.discard(process)

    def kill_all(self) -> None:
        """SIGKILL every running command's group; run() refuses new ones from now on."""
        with self._lock:
            self.closed = True
            live = list(self._live)
        for process in live:
            kill_group(process)


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    input: str | None = None,
    check: bool = False,
    children: Children | None = None,
) -> Proc:
    """Run argv to its end in a session of its own; its group is SIGKILLed on timeout
    (CommandError). `children` holds it while it runs.

    Output is decoded UTF-8/surrogateescape without newline translation, so
    `stdout.encode("utf-8", "surrogateescape")` gives back the exact bytes.
    """
    process = subprocess.Popen(
        list(argv),
        env=dict(env) if env is not None else None,
        start_new_session=True,
        stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    if children is not None:
        children.add(process)
    try:
        out, err = process.communicate(None if input is None else input.encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(process)
        out, err = process.communicate()
        message = err.decode(errors="replace")
        raise CommandError(f"timeout after {timeout}s: {list(argv)}\n{message}") from None
    finally:
        if children is not None:
            children.discard(process)
    text = [b.decode("utf-8", "surrogateescape") for b in (out, err)]
    result = subprocess.CompletedProcess(list(argv), process.returncode, *text)
    if check and result.returncode != 0:
        raise CommandError(f"exit {result.returncode}: {list(argv)}\n{result.stderr}")
    return result


def start(
    argv: Sequence[str],
    stdout: Path,
    stderr: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    append: bool = False,
) -> subprocess.Popen[bytes]:
    """A server in a session of its own, stdin closed, its output written to `stdout` (and
    its errors to `stderr`, or to the same file); `append` keeps what the files held."""
    mode = "ab" if append else "wb"
    with contextlib.ExitStack() as files:
        out = files.enter_context(stdout.open(mode))
        err = files.enter_context(stderr.open(mode)) if stderr else subprocess.STDOUT
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM by PID (a server stops its own workers), SIGKILL to its group after `timeout`
    seconds; its exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(process)
    return process.wait()


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group `process` leads; only the process itself when it leads none
    (started without a session of its own: its group is its parent's)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ minus proxies, REGISTRY_* (docker-registry reads them as configuration) and
    CONTAINERS_* (podman, skopeo and buildah do), plus `extra`."""
    drop = ("REGISTRY_", "CONTAINERS_", "_CONTAINERS_")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and not k.startswith(drop)
    }
    return env | extra


# --- what a process tree uses ----------------------------------------------------------------


def process_tree(root: int) -> dict[int, list[bytes]]:
    """`root` and every process below it, each with its /proc stat fields from field 3 on."""
    stats: dict[int, list[bytes]] = {}
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces: fields follow the last ")".
        fields = stat[stat.rindex(b")") + 2 :].split()
        stats[int(entry.name)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            tree[pid] = stats[pid]
            todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(fields: list[bytes]) -> float:
    """utime + stime of a process and of its children that it has waited for."""
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLOCK_TICKS


def tree_cpu_seconds(*roots: int) -> float:
    return sum(cpu_seconds(fields) for root in roots for fields in process_tree(root).values())


def tree_rss_kib(root: int) -> int:
    """VmRSS summed over a process and its descendants."""
    return sum(rss_kib(pid) for pid in process_tree(root))


def rss_kib(pid: int) -> int:
    """VmRSS of a process; 0 when it is gone (or a kernel thread)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0
