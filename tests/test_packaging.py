"""What can be checked without a container engine: the compose file, the Dockerfile and the
systemd unit agree with the config reference, and their command lines pass `regproxy check`."""

from __future__ import annotations

import re
import shlex
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
    assert any(str(v).endswith(":/var/lib/registry") for v in registry["volumes"])
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


def test_dockerfile_builds_a_small_non_root_image_with_a_healthcheck() -> None:
    dockerfile = (ROOT / "compose" / "Dockerfile").read_text()
    instructions = [
        line.split(None, 1)
        for line in re.sub(r"\\\n", " ", dockerfile).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    names = [name for name, *_ in instructions]
    args = {name: rest[0] if rest else "" for name, *rest in instructions}
    assert args["FROM"].endswith("-slim")
    user = args["USER"]
    assert user not in ("root", "0")
    assert names.index("USER") > names.index("RUN")  # installs as root, runs as the user
    assert "5043" in args["EXPOSE"]
    assert "5043" in args["HEALTHCHECK"]
    assert args["ENTRYPOINT"] == '["regproxy"]'
    for name, *rest in instructions:
        if name == "COPY":
            for source in rest[0].split()[:-1]:
                assert (ROOT / source).exists(), source
    compose_build = compose()["services"]["regproxy"]["build"]
    assert isinstance(compose_build, dict)
    assert (
        ROOT / "compose" / str(compose_build["context"]) / str(compose_build["dockerfile"])
    ).exists()


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
