"""`regproxy ARGS` as a process of its own, forked from a Python that has already imported the
command line (`python -m proxy` spends most of its CPU importing it; the tests start it hundreds
of times). Each run is a new process with its own working directory, environment, stdin, stdout,
stderr and exit status, running `proxy/__main__.py` as `-m` does; tests about the interpreter's
start itself (imports, the console script) start `python -m proxy` for real.

`python -m tests.forked` is the server: one per pytest process, started at its first run and
ending when that process closes its end of the socket."""

from __future__ import annotations

import array
import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

FDS = 4  # stdin, stdout, stderr, and the socket the run's pid and exit status go back on


class Server:
    """The client's end: a `python -m tests.forked` process and a socket to it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.lock = threading.Lock()
        self.control: socket.socket | None = None
        self.process: subprocess.Popen[bytes]

    def _started(self) -> socket.socket:
        if self.control is None:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.forked", str(theirs.fileno())],
                env=self.env, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                cwd=Path(__file__).resolve().parents[1],
            )  # fmt: skip
            theirs.close()
            self.control = ours
            atexit.register(self.close)
        return self.control

    def close(self) -> None:
        """Close our end of the socket: the server then ends."""
        if self.control is not None:
            self.control.close()
            self.process.wait(10)

    def run(
        self, args: list[str], cwd: Path, stdin: str | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """What `subprocess.run([python, -m, proxy, *args], capture_output=True, text=True)`
        returns, stdin from `stdin` (or /dev/null)."""
        with tempfile.TemporaryFile() as given, tempfile.TemporaryFile() as out, \
                tempfile.TemporaryFile() as err:  # fmt: skip
            given.write((stdin or "").encode())
            given.seek(0)
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            with ours, theirs:
                request = json.dumps({"args": args, "cwd": str(cwd), "env": self.env}).encode()
                fds = array.array("i", [given.fileno(), out.fileno(), err.fileno()])
                fds.append(theirs.fileno())
                with self.lock:
                    self._started().sendmsg(
                        [request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]
                    )
                theirs.close()
                ours.settimeout(timeout)
                with ours.makefile("r") as replies:
                    pid = int(replies.readline() or "0")
                    assert pid, "python -m tests.forked is not running"
                    try:
                        status = int(replies.readline())
                    except TimeoutError:
                        os.kill(pid, signal.SIGKILL)
                        raise subprocess.TimeoutExpired(["regproxy", *args], timeout) from None
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(
                [sys.executable, "-m", "proxy", *args], status,
                out.read().decode(errors="replace"), err.read().decode(errors="replace"),
            )  # fmt: skip


def serve(control: socket.socket) -> dict[str, object]:
    """Wait for runs; return (in the forked process that is to be the run) its request."""
    while True:
        request, fds, _, _ = socket.recv_fds(control, 1 << 20, FDS)
        # Waiters are reaped (so their CPU counts as ours, and so the pytest process's) as
        # new runs come, and all of them at the end.
        while reap(0 if request else os.WNOHANG):
            pass
        if not request:  # the pytest process has gone
            sys.exit(0)
        if os.fork() == 0:  # the waiter: forks the run, reports its pid and exit status
            control.close()
            reply = socket.socket(fileno=fds[3])
            pid = os.fork()
            if pid == 0:
                reply.close()
                return become(json.loads(request), fds[:3])
            reply.sendall(f"{pid}\n".encode())
            status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            reply.sendall(f"{status}\n".encode())
            os._exit(0)
        for fd in fds:
            os.close(fd)


def reap(options: int) -> bool:
    """Reap one ended waiter; False when there is none (or none ended, with WNOHANG)."""
    try:
        return os.waitpid(-1, options)[0] != 0
    except ChildProcessError:
        return False


def become(request: dict[str, object], fds: list[int]) -> dict[str, object]:
    """This process's stdio, working directory and environment as the run's."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.closerange(3, 1 << 16)
    # sys.stdin/stdout/stderr were made at the server's start for files, not terminals, as a
    # fresh interpreter makes them for these files: they now write to the run's.
    os.chdir(str(request["cwd"]))
    sys.path[0] = os.getcwd()  # as `-m` puts it
    os.environ.clear()
    os.environ.update(request["env"])  # type: ignore[arg-type]
    return request


if __name__ == "__main__":
    import runpy

    import proxy.cli.main  # noqa: F401 - what every run imports first: imported once, here

    run = serve(socket.socket(fileno=int(sys.argv[1])))
    sys.argv = ["-m", *run["args"]]  # type: ignore[misc]
    runpy.run_module("proxy", run_name="__main__", alter_sys=True)
