"""The README's examples, run as a reader runs them, each block on a fresh clone: every
```console block (the commands after `$ `, then exactly the output they print), the quickstart
(podman through `make run`'s proxy and registry: end to end, then the blocks that go on from it),
and the lists of what `make test` installs. A comment `<!-- readme: fresh clone | after make run
| quickstart | after the quickstart -->` before a block says where it starts: a clone as it is,
after `make run` made its files, or in the quickstart's shell."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.net import free_port
from proxy.conf.config import Config
from proxy.core.limits import address_share
from proxy.policy.grantfile import parse_max_duration
from tests.e2e.harness import Podman
from tests.terminal import Terminal

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
STATES = ("fresh clone", "after make run", "quickstart", "after the quickstart")
FENCE = re.compile(r"( *)```(\w*)\n")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence
    state: str | None  # from the `<!-- readme: ... -->` comment right before it
    kind: str  # the fence's info string
    text: str  # the content, the fence's indentation removed


def readme_blocks() -> list[Block]:
    text = README.read_text()
    blocks, position = [], 0
    while match := FENCE.search(text, position):
        indent, kind = match.groups()
        end = text.index(f"\n{indent}```\n", match.end() - 1)
        content = text[match.end() : end + 1]
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        marker = re.fullmatch(r"<!-- readme: (.+) -->", before)
        lines = [line.removeprefix(indent) for line in content.splitlines(keepends=True)]
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(Block(line, marker and marker.group(1), kind, "".join(lines)))
        position = end + len(indent) + 5
    return blocks


def console_blocks() -> list[Block]:
    return [block for block in readme_blocks() if block.kind == "console"]


def transcript(block: Block) -> list[tuple[str, str]]:
    """(command, the output the README shows for it), in order."""
    steps: list[tuple[str, str]] = []
    for line in block.text.splitlines(keepends=True):
        if line.startswith("$ "):
            steps.append((line[2:].rstrip("\n"), ""))
        else:
            command, output = steps[-1]
            steps[-1] = (command, output + line)
    return steps


def fresh_clone(directory: Path) -> Path:
    """The tracked files as they are in this checkout, and this checkout's .venv (what `make
    run` would have made) linked in."""
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, directory / name)
    (directory / ".venv").symlink_to(ROOT / ".venv")
    return directory


def files_of_make_run(clone: Path) -> str:
    """What `make run` makes before it serves (scripts/run.py): the certificate and the first
    user; returns what it printed (the password among it)."""
    code = (
        "import sys; sys.path.insert(0, 'scripts'); import run; from proxy.conf import config;"
        "c = config.load(run.CONFIG); run.ensure_certificate(c.tls_cert, c.tls_key);"
        "run.ensure_users(c.htpasswd, c.groups, c.push_group)"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=clone, env=shell_env(clone), capture_output=True,
        text=True, check=True, timeout=60,
    ).stdout  # fmt: skip


def shell_env(clone: Path, **extra: str) -> dict[str, str]:
    """A reader's shell: regproxy on PATH (.venv/bin), a terminal's unbuffered output."""
    home = clone.parent / "home"
    home.mkdir(exist_ok=True)
    path = f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"
    keep = {k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL", "TERM")}
    return {**keep, "HOME": str(home), "PATH": path, "PYTHONUNBUFFERED": "1", **extra}


def test_the_readme_has_console_examples_and_says_where_each_starts() -> None:
    blocks = console_blocks()
    assert len(blocks) >= 4
    assert [b.line for b in blocks if b.state not in STATES] == []
    commands = " ".join(c for b in blocks for c, _ in transcript(b))
    for needed in ("regproxy explain --acl conf/acl/", "regproxy passwd", "regproxy import",
                   "regproxy check"):  # fmt: skip
        assert needed in commands


@pytest.mark.parametrize("block", console_blocks(), ids=lambda b: f"README.md:{b.line}")
def test_console_example(block: Block, tmp_path: Path) -> None:
    clone = fresh_clone(tmp_path / "clone")
    if block.state == "after make run":
        files_of_make_run(clone)
    for command, expected in transcript(block):
        result = subprocess.run(
            ["bash", "-c", command], cwd=clone, env=shell_env(clone), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60,
        )  # fmt: skip
        assert result.stdout == expected, f"README.md:{block.line}: $ {command}"


def backticked(text: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", text))


def test_the_readme_lists_exactly_what_make_test_installs() -> None:
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    packages = re.search(r"^TEST_PACKAGES := (.*)$", makefile, re.M)
    assert packages is not None
    debian = {spec.split(":")[0] for spec in packages.group(1).split()}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    python = {re.split(r"[<>=!~ \[]", dep)[0] for dep in pyproject["project"][
        "optional-dependencies"]["test"]}  # fmt: skip
    text = " ".join(README.read_text().split())
    said = re.search(r"`make test` installs the Debian packages (.*?); then (.*?)\. It runs", text)
    assert said is not None
    assert backticked(said.group(1)) - {"apt-get update"} == debian
    assert backticked(said.group(2)) - {"make test", ".venv", "pip install -e '.[test]'"} == python


def test_the_defaults_the_readme_states_are_the_codes() -> None:
    """Each number the README gives as a limit's or a timeout's default ("`limits.per_user`
    (128)", "`timeouts.header` seconds (default 20)") is the one a config without it gets."""
    text = " ".join(README.read_text().split())
    stated = re.findall(
        r"`(limits|timeouts)\.(\w+)`(?: seconds)? \((?:default )?`?(\d+|auto)", text
    )
    assert {(section, key) for section, key, _ in stated} >= {
        ("limits", "per_user"), ("limits", "per_address"), ("limits", "upstream_wait"),
        ("limits", "anonymous"), ("limits", "anonymous_per_address"), ("limits", "min_rate"),
        ("limits", "connections_per_address"),
        ("timeouts", "header"), ("timeouts", "keepalive"), ("timeouts", "handshake"),
        ("timeouts", "client_idle"),
    }  # fmt: skip
    defaults = Config()
    for section, key, value in stated:
        expected = 0.0 if value == "auto" else float(value)  # auto: derived at start
        assert getattr(getattr(defaults, section), key) == expected, (section, key)
    # auto for one address: half of the connections (so one address never holds them all).
    assert [address_share(n, defaults.limits.connections_per_address) for n in (8, 9)] == [4, 4]


def test_the_longest_grant_the_readme_states_is_the_codes() -> None:
    """`grants.max_duration`: the config table's default and the prose's are the code's."""
    text = " ".join(README.read_text().split())
    table = re.findall(r"\| `grants\.max_duration` \| `(\w+)` \|", text)
    prose = re.findall(r"at most `grants\.max_duration` \(default `(\w+)`\)", text)
    assert len(table) == 1 and len(prose) == 1
    for stated in table + prose:
        assert parse_max_duration(stated) == Config().grants.max_duration


@pytest.mark.e2e
def test_quickstart(tmp_path: Path) -> None:
    """`make run` in a fresh clone, then the quickstart's commands and those that go on from it
    in one shell on a terminal (podman with private storage), the ports replaced by free ones;
    every command succeeds but those marked `# refused: WHY`, which fail saying WHY."""
    (quickstart,) = [b for b in readme_blocks() if b.state == "quickstart"]
    after = [b for b in readme_blocks() if b.state == "after the quickstart"]
    assert after, "the README has no block that goes on from the quickstart"
    text = "".join(block.text for block in (quickstart, *after))
    clone = fresh_clone(tmp_path / "clone")
    port, registry_port = free_port(), free_port()
    config = clone / "conf" / "regproxy.yaml"
    config.write_text(
        config.read_text()
        .replace("127.0.0.1:5043", f"127.0.0.1:{port}")
        .replace("127.0.0.1:5000", f"127.0.0.1:{registry_port}")
    )
    make_run = subprocess.Popen(
        [sys.executable, "scripts/run.py"], cwd=clone, env={**shell_env(clone),
        "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    podman = Podman(tmp_path / "podman")
    try:
        assert make_run.stdout is not None
        printed = ""
        while "listening on" not in printed:
            line = make_run.stdout.readline()
            assert line, printed
            printed += line
        password = re.search(r"password:\n\s+(\S+)\n", printed)
        assert password, printed
        shim = tmp_path / "bin" / "podman"  # podman as the harness runs it: private storage
        shim.parent.mkdir()
        real = [shutil.which("podman") or "podman", *podman.base[1:]]
        shim.write_text(f'#!/bin/sh\nexec {shlex.join(real)} "$@"\n')
        shim.chmod(0o755)
        steps = [s.strip() for s in text.replace("\\\n", " ").splitlines() if s.strip()]
        script = "".join(
            f'{step.replace("localhost:5043", f"localhost:{port}")}\necho "@@ $?"\n'
            for step in steps
        )
        (tmp_path / "quickstart.sh").write_text(script)
        env = {**podman.env, "PATH": f"{shim.parent}:{shell_env(clone)['PATH']}"}
        terminal = Terminal(["bash", str(tmp_path / "quickstart.sh")], cwd=clone, env=env)
        answers = {"Password: ": password.group(1), "Password for reader: ": "reader-secret"}
        assert terminal.answer_until_exit(answers) == 0, terminal.output
        outputs = re.split(r"@@ (\d+)\r?\n", terminal.output)
        results = list(zip(outputs[1::2], outputs[0::2], strict=False))
        assert len(results) == len(steps), terminal.output
        for step, (code, output) in zip(steps, results, strict=True):
            refused = re.search(r"# refused: (.*)$", step)
            if refused:
                assert code != "0" and refused.group(1).lower() in output.lower(), (step, output)
            else:
                assert code == "0", (step, output)
        pulled = podman.run("image", "exists", f"localhost:{port}/test/hello:1")
        assert pulled.returncode == 0
    finally:
        make_run.send_signal(signal.SIGINT)
        served = make_run.communicate(timeout=30)[0]
        print(served)  # shown when the test fails
        podman.cleanup()
    # The grant's push (after the quickstart) is audited with the grant.
    assert re.search(r'"user": "reader", "action": "push", .*"status": 201, "grant": ', served)
