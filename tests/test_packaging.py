"""What can be checked without a container engine: the compose file, the Dockerfile and the
systemd unit agree with the config reference, and their command lines pass `regproxy check`."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import trustme
import yaml

from tests.conftest import ENV

ROOT = Path(__file__).resolve().parents[1]
RECIPE_FILES = ("httpd.htpasswd", "httpd.groups", "domain.crt", "domain.key")


def compose() -> dict[str, dict[str, object]]:
    return dict(yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text()))


def recipe_auth_dir(directory: Path) -> Path:
    """The recipe's ./auth folder, with its own file names."""
    directory.mkdir()
    subprocess.run(
        ["htpasswd", "-Bbc", str(directory / "httpd.htpasswd"), "testuserpush", "pw"],
        check=True,
        capture_output=True,
    )
    (directory / "httpd.groups").write_text("pusher: testuserpush\n")
    leaf = trustme.CA().issue_cert("myregistrydomain.com")
    leaf.cert_chain_pems[0].write_to_path(str(directory / "domain.crt"))
    leaf.private_key_pem.write_to_path(str(directory / "domain.key"))
    return directory


def test_compose_is_the_recipe_with_regproxy(tmp_path: Path) -> None:
    services = compose()["services"]
    assert isinstance(services, dict) and set(services) == {"regproxy", "registry"}
    proxy, registry = services["regproxy"], services["registry"]
    assert proxy["ports"] == ["5043:5043"]
    assert "ports" not in registry  # reachable only inside the compose network
    assert registry["image"] == "registry:2"
    assert registry["volumes"] == ["./data:/var/lib/registry"]  # where the recipe keeps it
    assert "volumes" not in compose()  # no named volume hiding the data elsewhere
    # The entrypoint needs SETUID/SETGID/SETPCAP to hand over to uid 10001, which keeps
    # NET_BIND_SERVICE and DAC_READ_SEARCH (tests/test_image.py runs it); nothing else.
    assert proxy["cap_drop"] == ["ALL"]
    assert set(proxy["cap_add"]) == {
        "SETUID", "SETGID", "SETPCAP", "NET_BIND_SERVICE", "DAC_READ_SEARCH"
    }  # fmt: skip
    assert proxy["security_opt"] == ["no-new-privileges:true"]
    assert proxy["ulimits"] == {"nofile": {"soft": 65536, "hard": 65536}}
    (mount,) = proxy["volumes"]
    host_dir, container_dir = str(mount).split(":")[:2]
    assert host_dir == "./auth"
    command = [str(arg) for arg in proxy["command"]]
    assert command[0] == "serve"
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in command[1:])
    assert flags["listen"] == "0.0.0.0:5043"
    assert flags["upstream"] == "http://registry:5000"
    named = {Path(flags[k]).name for k in ("htpasswd", "groups", "tls-cert", "tls-key")}
    assert named == set(RECIPE_FILES)
    assert all(flags[k].startswith(container_dir + "/") for k in ("htpasswd", "tls-key"))
    # The same command line, with the mounted folder where it is here, passes the check.
    auth = recipe_auth_dir(tmp_path / "auth")
    args = ["check", *(a.replace(container_dir, str(auth)) for a in command[1:])]
    result = subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, "configuration ok\n"), result.stderr


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "compose" / "Dockerfile").read_text())
    return [
        (name, rest)
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
        for name, _, rest in [line.strip().partition(" ")]
    ]


def test_dockerfile_runs_the_entrypoint_with_the_healthcheck() -> None:
    instructions = dockerfile_instructions()
    args = dict(instructions)
    assert args["FROM"].endswith("-slim-bookworm")  # util-linux (setpriv) is essential there
    assert args["RUN"].startswith("setpriv --version && ")
    # No USER: the entrypoint starts as root only to drop to uid 10001 (tests/test_image.py).
    assert "USER" not in args
    assert "useradd --system --uid 10001 --gid 10001" in args["RUN"]
    copied = {rest.split()[-1]: rest.split()[0] for name, rest in instructions if name == "COPY"}
    assert copied["/usr/local/bin/regproxy-entrypoint"] == "compose/entrypoint.sh"
    assert copied["/usr/local/bin/regproxy-healthcheck"] == "compose/healthcheck.py"
    assert os.access(ROOT / "compose" / "entrypoint.sh", os.X_OK)  # COPY keeps the mode
    for name, rest in instructions:
        if name == "COPY":
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source
    assert args["ENTRYPOINT"] == '["/usr/local/bin/regproxy-entrypoint"]'
    assert args["CMD"] == '["serve", "--listen", "0.0.0.0:5043"]'
    assert "5043" in args["EXPOSE"]
    # The health check is the TLS request of compose/healthcheck.py (default port 5043).
    assert args["HEALTHCHECK"].endswith('CMD ["python", "/usr/local/bin/regproxy-healthcheck"]')
    assert 'URL = "https://127.0.0.1:5043/v2/"' in (ROOT / "compose/healthcheck.py").read_text()
    compose_build = compose()["services"]["regproxy"]["build"]
    assert isinstance(compose_build, dict)
    assert (
        ROOT / "compose" / str(compose_build["context"]) / str(compose_build["dockerfile"])
    ).exists()


def test_compose_file_is_valid_for_docker_compose(tmp_path: Path) -> None:
    """`docker-compose config` (Debian's 1.29, offline) checks the file against the Compose
    specification's JSON schema and resolves it; a wrong key fails the same way."""
    shutil.copy(ROOT / "compose" / "docker-compose.yml", tmp_path / "docker-compose.yml")
    (tmp_path / "auth").mkdir()
    result = subprocess.run(
        ["docker-compose", "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    assert resolved["registry"]["volumes"] == [f"{tmp_path}/data:/var/lib/registry:rw"]
    assert resolved["regproxy"]["volumes"] == [f"{tmp_path}/auth:/etc/regproxy:ro"]
    broken = (tmp_path / "docker-compose.yml").read_text().replace("ulimits:", "ulimit:")
    (tmp_path / "docker-compose.yml").write_text(broken)
    refused = subprocess.run(
        ["docker-compose", "config", "-q"], cwd=tmp_path, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "Unsupported config option for services.regproxy: 'ulimit'" in refused.stderr


def test_systemd_unit_commands_are_real(tmp_path: Path) -> None:
    unit = (ROOT / "conf" / "regproxy.service").read_text()
    lines = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    for key in ("ExecStartPre", "ExecStart"):
        argv = shlex.split(lines[key])
        assert argv[0].endswith("/regproxy") and argv[1] in ("check", "serve")
        assert argv[2:] == ["-c", "/etc/regproxy/regproxy.yaml"]
    assert lines["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert lines["User"] != "root" and lines["NoNewPrivileges"] == "yes"
    assert int(lines["LimitNOFILE"]) >= 65536
