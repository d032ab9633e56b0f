"""The targets: the registry itself and the front ends before it, started from the templates
on free loopback ports."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.fixtures import Fixtures
from bench.plan import TEMPLATES
from bench.processes import Processes, tool, wait_for_port
from devtools.net import free_port

APACHE_MODULES = Path("/usr/lib/apache2/modules")

DIRECT, LIMIT = "direct", "limit"
TARGETS = {
    DIRECT: "docker-registry itself, plain HTTP, no front end",
    LIMIT: "nginx, TLS and streaming proxy with keep-alive, no authentication",
    "regproxy": "regproxy serve, --workers N",
    "nginx-tuned": "nginx with auth_basic, no buffering, keep-alive to the registry",
    "nginx": "nginx as in the Docker docs' recipe (auth_basic, buffering)",
    "apache": "Apache httpd as in the Docker docs' recipe (mod_proxy, AuthGroupFile)",
}
TARGET_ORDER = tuple(TARGETS)


def render(template: str, destination: Path, values: Mapping[str, object]) -> Path:
    """Fill `{{name}}` placeholders; a placeholder without a value is an error."""
    text = (TEMPLATES / template).read_text()

    def value(match: re.Match[str]) -> str:
        return str(values[match.group(1)])

    destination.write_text(re.sub(r"\{\{(\w+)\}\}", value, text))
    return destination


@dataclass
class Target:
    """A server the cases run against, and the process whose tree is measured."""

    name: str
    port: int
    tls: bool
    authenticates: bool
    process: subprocess.Popen[bytes]  # sampled for RSS and CPU: the registry for direct

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"


def start_registry(directory: Path, processes: Processes) -> Target:
    """docker-registry on a free port, its data in `directory`/data (the direct target)."""
    port = free_port()
    directory.mkdir()
    values = {"dir": directory, "listen": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)}
    config = render("registry.yml", directory / "registry.yml", values)
    argv = [tool("docker-registry"), "serve", str(config)]
    process = processes.start("docker-registry", argv, directory)
    wait_for_port(port, process, "docker-registry", directory)
    return Target(DIRECT, port, False, False, process)


def start_targets(
    workdir: Path,
    fixtures: Fixtures,
    workers: int,
    cache_ttl: float,
    processes: Processes,
    only: Sequence[str] = TARGET_ORDER,
) -> dict[str, Target]:
    """The registry and the front ends before it named in `only`, in TARGET_ORDER."""
    registry = start_registry(workdir / "registry", processes)
    targets = {DIRECT: registry}
    common = {
        "registry": f"127.0.0.1:{registry.port}",
        "cert": fixtures.cert,
        "key": fixtures.key,
        "htpasswd": fixtures.htpasswd,
        "pushers_htpasswd": fixtures.pushers_htpasswd,
        "groups": fixtures.groups,
    }
    fronts: list[tuple[str, str, bool, Callable[[Path, dict[str, object]], list[str]]]] = [
        (LIMIT, "nginx-limit.conf", False, nginx_argv),
        ("regproxy", "regproxy.yaml", True, regproxy_argv(workers)),
        ("nginx-tuned", "nginx-tuned.conf", True, nginx_argv),
        ("nginx", "nginx-classic.conf", True, nginx_argv),
        ("apache", "apache.conf", True, apache_argv),
    ]
    for name, template, authenticates, argv in fronts:
        if name not in only:
            continue
        directory = workdir / name
        directory.mkdir()
        port = free_port()
        values: dict[str, object] = {
            **common,
            "dir": directory,
            "listen": f"127.0.0.1:{port}",
            "workers": workers,
            "cache_ttl": cache_ttl,
            "modules": APACHE_MODULES,
        }
        config = render(template, directory / template, values)
        process = processes.start(name, argv(config, values), directory)
        wait_for_port(port, process, name, directory)
        targets[name] = Target(name, port, True, authenticates, process)
    return {name: targets[name] for name in TARGET_ORDER if name in targets}


def nginx_argv(config: Path, values: dict[str, object]) -> list[str]:
    return [tool("nginx"), "-p", f"{values['dir']}/", "-e", f"{values['dir']}/error.log",
            "-c", str(config)]  # fmt: skip


def apache_argv(config: Path, values: dict[str, object]) -> list[str]:
    return [tool("apache2"), "-d", str(values["dir"]), "-f", str(config), "-DFOREGROUND"]


def regproxy_argv(workers: int) -> Callable[[Path, dict[str, object]], list[str]]:
    def argv(config: Path, _values: dict[str, object]) -> list[str]:
        return [sys.executable, "-m", "proxy", "serve", "-c", str(config),
                "--workers", str(workers)]  # fmt: skip

    return argv
