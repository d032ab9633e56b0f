"""Several workers: worker 0 is `regproxy serve`'s own process and supervises the others (like
nginx's master, but serving too): it starts them with the listening socket and the worker mesh,
relays signals to them, and restarts one that dies."""

# One process fewer than a supervisor of its own (issue 24: 48 MiB per worker, the whole tree
# counted): Python, OpenSSL and the other shared libraries are counted once less. What it
# trades away: when worker 0 itself dies, the others drain and stop (PR_SET_PDEATHSIG) and
# the service is down until whatever started it starts it again (README: Processes).
# The workers are told about themselves in REGPROXY_WORKER, marshal data (the same
# interpreter reads it).

from __future__ import annotations

import asyncio
import contextlib
import marshal
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping

WORKER_ENV = "REGPROXY_WORKER"
TICK = 0.1
MAX_BACKOFF = 30.0
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def encode(spec: Mapping[str, object]) -> str:
    """A spec as an environment variable's value."""
    return marshal.dumps(dict(spec)).hex()


def decode(text: str) -> dict[str, object]:
    spec: dict[str, object] = marshal.loads(bytes.fromhex(text))
    return spec


class Log:
    """Lines like `logging`'s "%(asctime)s %(levelname)s regproxy: %(message)s" on stderr,
    at or above the configured level."""

    def __init__(self, level: str) -> None:
        self.level = LEVELS.get(level.lower(), LEVELS["info"])

    def write(self, level: str, message: str) -> None:
        if LEVELS[level] < self.level:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        line = f"{stamp},{int(now * 1000) % 1000:03d} {level.upper()} regproxy: {message}\n"
        _quietly(os.write, 2, line.encode(errors="replace"))


class Supervisor:
    """Worker 0's second job: `start()` the others, `watch()` them until they have stopped."""

    def __init__(self, spec: dict[str, object]) -> None:
        self.spec = spec
        self.log = Log(str(spec["log_level"]))
        self.workers = int(str(spec["workers"]))
        self.mesh: list[tuple[socket.socket, socket.socket]] = []
        self.children: dict[int, int] = {}  # pid -> worker index
        self.stopping = False
        self.abandoned = False  # worker 0 could not start: it said why, nothing more is said
        self.started: dict[int, float] = {}  # worker index -> when it was last started
        self.backoff: dict[int, float] = {}
        self.due: dict[int, float] = {}  # worker index -> when to start it again
        self.ready_r, self.ready_w = os.pipe()  # each worker writes its index once it serves
        os.set_blocking(self.ready_r, False)
        self.waiting: set[int] = set(range(self.workers))  # workers not serving yet
        self.runtime = _runtime_dir()
        self.env: dict[str, str] = {}
        self.shared: dict[str, str] = {}

    def start(self) -> dict[str, object]:
        """Start workers 1..N-1; worker 0's own spec (this process)."""
        self.env, self.shared = self._environment(self.runtime)
        self.mesh = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in self.waiting]
        for index in range(1, self.workers):
            self._start(index, again=False)
        return self._worker_spec(0)

    def relay(self, signum: int) -> None:
        """A signal this process got: to every other worker too."""
        if signum in (signal.SIGTERM, signal.SIGINT):
            if not self.stopping:
                self.log.write("info", "shutting down: draining the workers")
            self.stopping = True  # no worker is started again
        for pid in self.children:
            _quietly(os.kill, pid, signum)  # one that has just exited

    def abandon(self) -> None:
        """Worker 0 cannot serve: stop the others, and say no more (why is said already, by
        worker 0 or by the exception that stopped it)."""
        self.stopping = self.abandoned = True
        self.relay(signal.SIGTERM)

    def serving(self) -> None:
        """Worker 0 accepts connections."""
        self.waiting.discard(0)

    async def watch(self) -> int:
        """Until a stop and every other worker has exited: say "listening" once all serve,
        restart those that die. The exit status (of the first that failed while stopping)."""
        announced = False
        status = 0
        while self.children or not self.stopping:
            self._ready()
            if not announced and not self.waiting and not self.stopping:
                announced = True
                self.log.write(
                    "info",
                    f"regproxy listening on https://{self.spec['listen']} -> "
                    f"{self.spec['upstream']} with {self.workers} workers",
                )
            status = self._reap() or status
            for index, when in list(self.due.items()):
                if not self.stopping and time.monotonic() >= when:
                    del self.due[index]
                    self._start(index, again=True)
            await asyncio.sleep(TICK)
        return status

    def close(self) -> None:
        """Once every worker has stopped: the mesh, the pipe and the shared files."""
        for pair in self.mesh:
            for end in pair:
                end.close()
        os.close(self.ready_r)
        os.close(self.ready_w)
        _remove(self.runtime)
        if not self.abandoned:
            self.log.write("info", "stopped")

    def _environment(self, runtime: str) -> tuple[dict[str, str], dict[str, str]]:
        """The workers' environment (this one's too), and what every worker is told alike:
        the keys they share (an upload may continue through any worker) and the lock
        directory."""
        if self.spec["metrics"]:
            # Before prometheus-client is first imported: workers then share their metrics.
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(runtime, "metrics")
            os.mkdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        os.mkdir(os.path.join(runtime, "locks"))
        shared = {
            "catalog_key": os.urandom(32).hex(),
            "upload_key": os.urandom(32).hex(),
            "credentials_key": os.urandom(32).hex(),
            "lock_dir": os.path.join(runtime, "locks"),
        }
        return dict(os.environ), shared

    def _ends(self, index: int) -> tuple[socket.socket, list[socket.socket]]:
        """A worker's ends of the mesh: its inbox, and the others' outboxes."""
        return self.mesh[index][0], [out for i, (_, out) in enumerate(self.mesh) if i != index]

    def _worker_spec(self, index: int) -> dict[str, object]:
        inbox, outboxes = self._ends(index)
        return {
            **self.spec,
            **self.shared,
            "index": index,
            "inbox_fd": inbox.fileno(),
            "outbox_fds": [o.fileno() for o in outboxes],
            "ready_fd": self.ready_w,
            "parent": os.getpid(),
        }

    def _start(self, index: int, again: bool) -> None:
        """Start worker `index`; `again`: after the start (it had died, or could not start)."""
        inbox, outboxes = self._ends(index)
        fds = [int(str(self.spec["listen_fd"])), inbox.fileno(), *(o.fileno() for o in outboxes)]
        fds.append(self.ready_w)
        self.waiting.add(index)
        for fd in fds:  # this worker's ends only: the others' stay closed on exec
            os.set_inheritable(fd, True)
        try:
            pid = os.posix_spawn(
                sys.executable,
                [sys.executable, "-m", "proxy.serve.worker"],
                {**self.env, WORKER_ENV: encode({**self._worker_spec(index), "again": again})},
                setpgroup=0,  # a terminal's Ctrl-C reaches worker 0 only, which relays it
            )
        finally:
            for fd in fds[1:]:  # the listening socket is every worker's
                os.set_inheritable(fd, False)
        self.children[pid] = index
        self.started[index] = time.monotonic()

    def _ready(self) -> None:
        """Note the workers that say they accept connections."""
        try:
            lines = os.read(self.ready_r, 4096).split()
        except BlockingIOError:
            return
        for line in lines:
            self.waiting.discard(int(line))

    def _reap(self) -> int:
        """Collect exited workers and plan a restart of those that died unasked; a failure
        status."""
        # Sooner or later by how long they lived: one that cannot start is no tight loop.
        status = 0
        for pid, index in list(self.children.items()):
            code = _exited(pid)
            if code is None:
                continue
            del self.children[pid]
            if self.stopping:
                status = status or code
                continue
            lived = time.monotonic() - self.started[index]
            delay = (
                0.0 if lived > MAX_BACKOFF else min(MAX_BACKOFF, 2 * self.backoff.get(index, 0.5))
            )
            self.backoff[index] = delay
            self.log.write(
                "error",
                f"worker {index} (pid {pid}) exited with {code}: starting another in {delay:.0f}s",
            )
            self.due[index] = time.monotonic() + delay
        return status


def _exited(pid: int) -> int | None:
    """A worker's exit status as `subprocess` gives it (-N: killed by signal N); None while it
    runs."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # reaped already: it is gone, how is unknown
        return 1
    return os.waitstatus_to_exitcode(status) if done else None


def _runtime_dir() -> str:
    """A private directory for the workers' shared files (metrics, locks)."""
    base = os.environ.get("TMPDIR") or "/tmp"
    path = os.path.join(base, f"regproxy-{os.getpid()}-{os.urandom(4).hex()}")
    os.mkdir(path, mode=0o700)
    return path


def _remove(directory: str) -> None:
    for root, dirs, files in os.walk(directory, topdown=False):
        for name in files:
            _quietly(os.unlink, os.path.join(root, name))
        for name in dirs:
            _quietly(os.rmdir, os.path.join(root, name))
    _quietly(os.rmdir, directory)


def _quietly(action: Callable[..., object], *args: object) -> None:
    """`action(*args)`, an OSError ignored (a file or process already gone, stderr closed)."""
    with contextlib.suppress(OSError):
        action(*args)
