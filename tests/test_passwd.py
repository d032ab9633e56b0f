"""`regproxy passwd` as users run it (proxy.cli.passwd): files Apache's htpasswd accepts, user
names ACL rules can use, and the prompt at a real terminal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.authn.credentials import hash_password
from tests.conftest import ENV, regproxy
from tests.terminal import Terminal


def test_passwd_writes_files_apache_accepts(tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("# team users\nold:$apr1$abcdefgh$0123456789012345678901\n")
    htpasswd.chmod(0o640)
    added = regproxy("passwd", str(htpasswd), "alice", "--stdin", cwd=tmp_path, stdin="a:b c\n")
    assert added.returncode == 0 and "added user alice" in added.stdout
    apache = subprocess.run(
        ["htpasswd", "-vb", str(htpasswd), "alice", "a:b c"], capture_output=True, text=True
    )
    assert apache.returncode == 0, apache.stderr
    assert htpasswd.read_text().startswith("# team users\nold:$apr1$")
    assert htpasswd.stat().st_mode & 0o777 == 0o640
    ok = regproxy("passwd", str(htpasswd), "alice", "--verify", "--stdin", cwd=tmp_path,
                  stdin="a:b c\n")  # fmt: skip
    bad = regproxy("passwd", str(htpasswd), "alice", "--verify", "--stdin", cwd=tmp_path,
                   stdin="nope\n")  # fmt: skip
    assert (ok.returncode, bad.returncode) == (0, 3)
    changed = regproxy("passwd", str(htpasswd), "alice", "--stdin", "--cost", "5",
                       cwd=tmp_path, stdin="new\n")  # fmt: skip
    assert changed.returncode == 0 and "updated user alice" in changed.stdout
    assert "alice:$2y$05$" in htpasswd.read_text()
    deleted = regproxy("passwd", str(htpasswd), "alice", "--delete", cwd=tmp_path)
    assert deleted.returncode == 0 and "alice" not in htpasswd.read_text()
    again = regproxy("passwd", str(htpasswd), "alice", "--delete", cwd=tmp_path)
    assert again.returncode == 1 and "not found" in again.stderr


def test_passwd_refuses_a_name_that_would_cross_a_namespace(tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:$apr1$abcdefgh$0123456789012345678901\n")
    refused = regproxy("passwd", str(htpasswd), "alice/sub", cwd=tmp_path, stdin="pw\npw\n")
    assert refused.returncode == 1
    assert "user name 'alice/sub' refused" in refused.stderr
    assert "Password" not in refused.stdout + refused.stderr  # refused before asking
    assert htpasswd.read_text() == "alice:$apr1$abcdefgh$0123456789012345678901\n"


PASSWD_TERMINAL = [sys.executable, "-m", "proxy", "passwd"]


@pytest.mark.parametrize(
    ("keys", "code", "said"),
    [
        ("\x03", 130, ""),  # Ctrl-C at the prompt
        ("\x04", 1, "no password: end of input"),  # Ctrl-D
        ("\n", 1, "empty password refused"),
        ("one\ntwo\n", 1, "passwords do not match"),
    ],
    ids=["ctrl-c", "ctrl-d", "empty", "mismatch"],
)
def test_passwd_at_a_terminal(tmp_path: Path, keys: str, code: int, said: str) -> None:
    terminal = Terminal([*PASSWD_TERMINAL, str(tmp_path / "ht"), "alice"], cwd=tmp_path, env=ENV)
    terminal.expect("Password: ")
    if "\n" in keys[:-1]:  # typed twice: wait for the second prompt
        first, second = keys.split("\n", 1)
        terminal.send(first + "\n")
        terminal.expect("Re-type password: ")
        terminal.send(second)
    else:
        terminal.send(keys)
    assert terminal.wait() == code, terminal.output
    assert said in terminal.output and "Traceback" not in terminal.output
    assert not (tmp_path / "ht").exists()


def test_passwd_at_a_terminal_asks_twice_and_writes(tmp_path: Path) -> None:
    terminal = Terminal([*PASSWD_TERMINAL, str(tmp_path / "ht"), "alice"], cwd=tmp_path, env=ENV)
    assert terminal.answer_until_exit({"Password: ": "s3cret", "Re-type password: ": "s3cret"}) == 0
    assert "added user alice" in terminal.output
    assert "s3cret" not in terminal.output  # never echoed
    ok = regproxy("passwd", str(tmp_path / "ht"), "alice", "--verify", "--stdin", cwd=tmp_path,
                  stdin="s3cret\n")  # fmt: skip
    assert ok.returncode == 0


@pytest.mark.parametrize(
    "name", ["Alice", "a/b", "*", "alice@example.com", "-", "team_", ".hidden", "a b", "x:y"]
)
def test_passwd_refuses_new_names_acl_rules_cannot_use(tmp_path: Path, name: str) -> None:
    result = regproxy("passwd", str(tmp_path / "ht"), name, "--stdin", cwd=tmp_path, stdin="p\n")
    assert result.returncode == 1
    assert f"user name {name!r} refused: ACL rules like" in result.stderr
    assert not (tmp_path / "ht").exists()


@pytest.mark.parametrize("name", ["alice", "ci-bot", "j.doe", "build__2", "a1"])
def test_passwd_takes_names_that_are_repository_components(tmp_path: Path, name: str) -> None:
    result = regproxy("passwd", str(tmp_path / "ht"), name, "--stdin", "--cost", "4",
                      cwd=tmp_path, stdin="p\n")  # fmt: skip
    assert (result.returncode, result.stdout) == (0, f"added user {name}\n")


def test_passwd_still_changes_an_existing_user_with_an_old_style_name(tmp_path: Path) -> None:
    htpasswd = tmp_path / "ht"
    htpasswd.write_text(f"John.Smith:{hash_password('old', cost=4)}\n")
    result = regproxy("passwd", str(htpasswd), "John.Smith", "--stdin", "--cost", "4",
                      cwd=tmp_path, stdin="new\n")  # fmt: skip
    assert (result.returncode, result.stdout) == (0, "updated user John.Smith\n")
