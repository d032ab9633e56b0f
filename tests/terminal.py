"""A program on a pseudo-terminal, as a person at a terminal runs it: it is the controlling
terminal (getpass and `read -s` read from it), prompts are answered as they appear, and
Ctrl-C or Ctrl-D are typed as keys."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


class Terminal:
    def __init__(self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str]) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: exec at once, nothing of the test's process runs here
            try:
                # As a terminal starts a shell: every signal at its default, none blocked. A
                # test run started with Ctrl-C ignored (nohup, `make test &` in a script)
                # would pass that on through exec, and Python then never turns Ctrl-C into
                # KeyboardInterrupt.
                for number in signal.valid_signals():
                    with contextlib.suppress(OSError, ValueError):
                        signal.signal(number, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, ())
                os.chdir(cwd)
                os.execvpe(argv[0], list(argv), dict(env))
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.output = ""
        self._seen = 0  # output before this index has been matched already
        self.code: int | None = None

    def _read(self, deadline: float) -> bool:
        """Read what is there (waiting until `deadline`); False at the end of output."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the program and everything it started closed the terminal
            return False
        self.output += data.decode(errors="replace")
        return bool(data)

    def expect(self, text: str, timeout: float = 60) -> None:
        """Wait until `text` appears after what was matched before."""
        deadline = time.monotonic() + timeout
        while text not in self.output[self._seen :]:
            if not self._read(deadline) or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared in:\n{self.output}")
        self._seen = self.output.index(text, self._seen) + len(text)

    def send(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def answer_until_exit(self, answers: Mapping[str, str], timeout: float = 300) -> int:
        """Type answers[prompt] after each prompt that appears, until the program exits."""
        deadline = time.monotonic() + timeout
        prompts = sorted(answers, key=len, reverse=True)
        while self._read(deadline):
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"still running after {timeout} s:\n{self.output}")
            pending = self.output[self._seen :]
            found = [(pending.index(p), p) for p in prompts if p in pending]
            if found:
                at, prompt = min(found)
                self._seen += at + len(prompt)
                self.send(answers[prompt] + "\n")
        return self.wait()

    def wait(self, timeout: float = 60) -> int:
        """The exit status; AssertionError, saying what the program was doing, when it is still
        running after `timeout` (a status of -9 is then someone else's SIGKILL)."""
        deadline = time.monotonic() + timeout
        while self._read(deadline) and time.monotonic() < deadline:
            pass
        while self.code is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
            elif time.monotonic() > deadline:
                doing = self._doing()
                self.kill()
                os.waitpid(self.pid, 0)
                os.close(self.fd)
                raise AssertionError(f"still running after {timeout} s ({doing}):\n{self.output}")
            else:
                time.sleep(0.05)
        os.close(self.fd)
        return self.code

    def _doing(self) -> str:
        """The program's state, signals and wait channel, from /proc."""
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{self.pid}/status").read_text().splitlines()
            wanted = ("State", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")
            fields = [" ".join(line.split()) for line in status if line.startswith(wanted)]
            return ", ".join([*fields, "wchan " + Path(f"/proc/{self.pid}/wchan").read_text()])
        return "gone"

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # pty.fork made it a session leader
