"""The servers a bench run starts (stopped by PID at the end) and what their process trees
use while a case runs."""

from __future__ import annotations

import compileall
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.plan import log
from devtools import net
from devtools.processes import cpu_seconds, process_tree, rss_kib, start, stop

SAMPLE_INTERVAL = 0.05  # seconds between RSS samples of a target's process tree
STARTUP_TIMEOUT = 30.0


def compile_bytecode(checkout: Path) -> None:
    """Write the bytecode of the regproxy in `checkout`, as an installed package has it: with
    PYTHONDONTWRITEBYTECODE set, every regproxy started would compile its modules again, and
    its startup, reloads and `check` would be measured with that in them."""
    compileall.compile_dir(checkout / "proxy", quiet=2)


def tool(name: str) -> str:
    """A command's path; Debian puts nginx and apache2 in /usr/sbin, not always on PATH, and
    py-spy is in the virtualenv beside this Python."""
    path = shutil.which(name) or shutil.which(
        name, path=f"/usr/sbin:/sbin:{Path(sys.executable).parent}"
    )
    if path is None:
        raise SystemExit(f"{name} not found: run `make bench`, which installs it")
    return path


@dataclass
class Usage:
    """A process tree during a case: peak VmRSS summed over the tree, peak VmRSS of its
    largest worker (a process below the root; the root itself when it has none), and the CPU
    seconds the tree used."""

    tree_kib: int = 0
    worker_kib: int = 0
    cpu_seconds: float = 0.0

    def include(self, other: Usage) -> None:
        self.tree_kib = max(self.tree_kib, other.tree_kib)
        self.worker_kib = max(self.worker_kib, other.worker_kib)
        self.cpu_seconds += other.cpu_seconds


class UsageSampler:
    """Samples one process tree every SAMPLE_INTERVAL seconds in a background thread."""

    def __init__(self, root: int) -> None:
        self.usage = Usage()
        self._root = root
        self._cpu_at_start = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> float:
        """Update the peaks; the tree's CPU seconds so far."""
        tree = process_tree(self._root)
        sizes = {pid: rss_kib(pid) for pid in tree}
        workers = [size for pid, size in sizes.items() if pid != self._root] or [*sizes.values()]
        self.usage.tree_kib = max(self.usage.tree_kib, sum(sizes.values()))
        self.usage.worker_kib = max(self.usage.worker_kib, *workers, 0)
        return sum(cpu_seconds(fields) for fields in tree.values())

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self._sample()

    def __enter__(self) -> Usage:
        self._cpu_at_start = self._sample()
        self._thread.start()
        return self.usage

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.usage.cpu_seconds = self._sample() - self._cpu_at_start


class Processes:
    """What this run started, stopped by PID (never by name) in reverse order."""

    def __init__(self) -> None:
        self._started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, argv: Sequence[str], workdir: Path,
        env: Mapping[str, str] | None = None, cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:  # fmt: skip
        """`argv` in a session of its own, its output in `workdir`'s stdout.log and stderr.log."""
        log(f"starting {name}: {' '.join(argv)}")
        process = start(argv, workdir / "stdout.log", workdir / "stderr.log", env=env, cwd=cwd,
                        append=True)  # fmt: skip
        self._started.append((name, process))
        return process

    def stop_all(self) -> None:
        while self._started:
            self.stop(self._started[-1][1])

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM by PID (each server stops its own workers); SIGKILL to its group after 15 s."""
        name = next(n for n, p in self._started if p is process)
        self._started.remove((name, process))
        if process.poll() is None and stop(process, 15) == -signal.SIGKILL:
            log(f"{name} (pid {process.pid}) ignored SIGTERM: its process group was killed")


def machine(load_before: float) -> dict[str, object]:
    """What a result was measured on, for the JSON beside each report."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }


def last_lines(directory: Path, count: int = 10) -> str:
    """The end of a server's own logs (stderr, error log), for an error message."""
    lines = []
    for path in sorted(directory.glob("*.log")):
        if path.name != "access.log":
            lines += [f"{path.name}: {line}" for line in path.read_text().splitlines()[-count:]]
    return "\n".join(lines)


def wait_for_port(port: int, process: subprocess.Popen[bytes], name: str, logs: Path) -> None:
    """Until `name` listens on `port`; the end of its logs in the error when it does not."""
    try:
        net.wait_for_port(port, process, STARTUP_TIMEOUT)
    except RuntimeError as exc:
        raise RuntimeError(f"{name}: {exc}:\n{last_lines(logs)}") from None
