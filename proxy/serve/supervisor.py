"""Several workers: a small supervisor process (like nginx's master) that starts them with the
listening socket and the worker mesh, relays signals, and restarts a worker that dies.

`regproxy serve` becomes it (exec, same PID) once the configuration is checked and the socket
bound; it imports only a few standard modules (not even `secrets`, which pulls in OpenSSL).
"""

# Its memory counts against every worker's share (issue 24), so it is run as a script with
# `-I -S` (no `site`: its path hooks and .pth files) and uses only modules built into the
# interpreter besides `os`: `logging`, `subprocess`, `json`, `signal` and `socket` would each
# import `re`, `enum` or `threading`, about 3.5 MiB together. The specs travel as marshal
# data (the same interpreter reads them) and its few log lines are written as `logging`
# formats them in the workers.

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stubs: `signal` itself imports enum
import _socket
import marshal
import os
import sys
import time

TYPE_CHECKING = False  # mypy takes it as true; `typing` itself would cost 1.9 MiB
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Mapping
    from pathlib import Path

RELAYED = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP, _signal.SIGUSR1)
SPEC_ENV = "REGPROXY_SUPERVISOR"
WORKER_ENV = "REGPROXY_WORKER"
TICK = 0.1
MAX_BACKOFF = 30.0
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def become_supervisor(
    sock: socket.socket,
    config_path: Path | None,
    overrides: Mapping[str, object],
    workers: int,
    log_level: str,
    listen: str,
    upstream: str,
    metrics: bool,
) -> None:
    """Replace this (checked, bound) process by the supervisor; never returns."""
    spec = {
        "listen_fd": sock.fileno(),
        "config": str(config_path) if config_path is not None else None,
        "overrides": dict(overrides),
        "workers": workers,
        "log_level": log_level,
        "listen": listen,
        "upstream": upstream,
        "metrics": metrics,
    }
    sock.set_inheritable(True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ[SPEC_ENV] = encode(spec)
    os.execv(sys.executable, [sys.executable, "-I", "-S", os.path.abspath(__file__)])


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
    def __init__(self, spec: dict[str, object]) -> None:
        self.spec = spec
        self.log = Log(str(spec["log_level"]))
        self.mesh: list[tuple[_socket.socket, _socket.socket]] = []
        self.children: dict[int, int] = {}  # pid -> worker index
        self.signals: list[int] = []
        self.stopping = False
        self.started: dict[int, float] = {}  # worker index -> when it was last started
        self.backoff: dict[int, float] = {}
        self.due: dict[int, float] = {}  # worker index -> when to start it again
        self.ready_r, self.ready_w = os.pipe()  # each worker writes its index once it serves
        os.set_blocking(self.ready_r, False)
        self.waiting: set[int] = set()  # workers not ready yet

    def run(self) -> int:
        workers = int(str(self.spec["workers"]))
        runtime = _runtime_dir()
        env, shared = self._environment(runtime)
        self.mesh = [
            _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_DGRAM) for _ in range(workers)
        ]
        for signum in RELAYED:
            _signal.signal(signum, lambda signum, _frame: self.signals.append(signum))
        for index in range(workers):
            self._start(index, env, shared)
        try:
            status = self._watch(workers, env, shared)
        finally:
            for pair in self.mesh:
                for end in pair:
                    end.close()
            os.close(self.ready_r)
            os.close(self.ready_w)
            _remove(runtime)
        self.log.write("info", "stopped")
        return status

    def _environment(self, runtime: str) -> tuple[dict[str, str], dict[str, str]]:
        """The workers' environment, and what every worker is told alike: the keys they share
        (an upload may continue through any worker) and the lock directory."""
        env = dict(os.environ)
        env.pop(SPEC_ENV, None)
        if self.spec["metrics"]:
            # Before prometheus-client is first imported: workers then share their metrics.
            env["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(runtime, "metrics")
            os.mkdir(env["PROMETHEUS_MULTIPROC_DIR"])
        os.mkdir(os.path.join(runtime, "locks"))
        shared = {
            "catalog_key": os.urandom(32).hex(),
            "upload_key": os.urandom(32).hex(),
            "credentials_key": os.urandom(32).hex(),
            "lock_dir": os.path.join(runtime, "locks"),
        }
        return env, shared

    def _watch(self, workers: int, env: dict[str, str], shared: dict[str, str]) -> int:
        """Until every worker has exited after a stop: say "listening" once all serve, relay
        signals, restart workers that died. The exit status."""
        announced = False
        status = 0
        while self.children or (self.due and not self.stopping):
            self._ready()
            if not announced and not self.waiting and not self.stopping:
                announced = True
                self.log.write(
                    "info",
                    f"regproxy listening on https://{self.spec['listen']} -> "
                    f"{self.spec['upstream']} with {workers} workers",
                )
            self._relay()
            status = self._reap() or status
            for index, when in list(self.due.items()):
                if not self.stopping and time.monotonic() >= when:
                    del self.due[index]
                    self._start(index, env, shared)
            time.sleep(TICK)
        return status

    def _start(self, index: int, env: dict[str, str], shared: dict[str, str]) -> None:
        inbox = self.mesh[index][0]
        outboxes = [out for i, (_, out) in enumerate(self.mesh) if i != index]
        fds = [int(str(self.spec["listen_fd"])), inbox.fileno(), *(o.fileno() for o in outboxes)]
        worker = {
            **self.spec,
            **shared,
            "index": index,
            "inbox_fd": inbox.fileno(),
            "outbox_fds": [o.fileno() for o in outboxes],
            "ready_fd": self.ready_w,
            "parent": os.getpid(),
        }
        fds.append(self.ready_w)
        self.waiting.add(index)
        for fd in fds:  # this worker's ends only: the others' stay closed on exec
            os.set_inheritable(fd, True)
        try:
            pid = os.posix_spawn(
                sys.executable,
                [sys.executable, "-m", "proxy.serve.worker"],
                {**env, WORKER_ENV: encode(worker)},
                setpgroup=0,  # a terminal's Ctrl-C reaches the supervisor only
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

    def _relay(self) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            if signum in (_signal.SIGTERM, _signal.SIGINT):
                if not self.stopping:
                    self.log.write("info", "shutting down: draining the workers")
                    # No worker will be started again: the socket is theirs alone now, so it
                    # refuses connections once the last of them stops accepting, rather than
                    # queueing them for nobody.
                    os.close(int(str(self.spec["listen_fd"])))
                self.stopping = True
            for pid in self.children:
                _quietly(os.kill, pid, signum)  # one that has just exited

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
    try:  # noqa: SIM105 - contextlib would cost 0.8 MiB here
        action(*args)
    except OSError:
        pass


def main() -> int:
    return Supervisor(decode(os.environ[SPEC_ENV])).run()


if __name__ == "__main__":
    sys.exit(main())
