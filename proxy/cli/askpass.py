"""A password typed at the terminal with echo off, as getpass reads it, where Ctrl-C always ends
the wait."""

from __future__ import annotations

import contextlib
import getpass
import locale
import os
import select
import signal
import termios
from collections.abc import Iterator


def ask_password(prompt: str) -> str:
    """The line typed after `prompt` on the controlling terminal; EOFError on Ctrl-D,
    KeyboardInterrupt on Ctrl-C. Without a terminal, getpass's fallback."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return getpass.getpass(prompt)
    try:
        with _signal_pipe() as wake, _echo_off(fd):
            os.write(fd, prompt.encode())
            line = _read_line(fd, wake)
        if not line:
            raise EOFError
        os.write(fd, b"\n")  # the Enter that was not echoed
        return line.decode(locale.getpreferredencoding(False)).removesuffix("\n")
    finally:
        os.close(fd)


@contextlib.contextmanager
def _echo_off(fd: int) -> Iterator[None]:
    old = termios.tcgetattr(fd)
    quiet = list(old)
    quiet[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSAFLUSH, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, old)


@contextlib.contextmanager
def _signal_pipe() -> Iterator[int]:
    """A pipe that every signal writes a byte to while the block runs."""
    wake_in, wake_out = os.pipe()
    os.set_blocking(wake_out, False)
    # getpass blocks in read(): a Ctrl-C that lands after the interpreter last looked for
    # signals but before read() starts is never acted on, and read() waits on (seen under
    # load). A wait on this pipe too returns for it, whenever it lands.
    previous = signal.set_wakeup_fd(wake_out, warn_on_full_buffer=False)
    try:
        yield wake_in
    finally:
        signal.set_wakeup_fd(previous)
        os.close(wake_out)
        os.close(wake_in)


def _read_line(fd: int, wake: int) -> bytes:
    """Bytes up to a newline, or fewer at end of input; a signal's Python handler (Ctrl-C's
    KeyboardInterrupt) runs as soon as the wait returns."""
    line = b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([fd, wake], [], [])
        if wake in ready:
            os.read(wake, 512)  # its handler runs before the loop waits again
        if fd in ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            line += chunk
    return line
