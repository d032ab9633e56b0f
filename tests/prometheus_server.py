"""A real Prometheus (Debian's `prometheus`) on a free loopback port, scraping given targets
every second and evaluating given rule files, asked through its HTTP API."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from devtools.net import free_port
from tests.conftest import until
from tests.redis_server import debian_binary


def scrape_config(job: str, targets: Sequence[str], rule_files: Sequence[Path]) -> str:
    """prometheus.yml: one job scraping `targets` (host:port, `/metrics`), scrapes and rule
    evaluations every second."""
    return json.dumps(  # JSON is YAML
        {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}],
        }
    )


class Prometheus:
    """A running Prometheus: `api(path, **params)` answers its `/api/v1/...` JSON `data`."""

    def __init__(self, directory: Path, session: aiohttp.ClientSession) -> None:
        self.directory = directory
        self.session = session
        self.url = f"http://127.0.0.1:{free_port()}"

    async def api(self, path: str, **params: str) -> Any:
        """`data` of a successful answer; AssertionError with Prometheus' error otherwise."""
        async with self.session.get(f"{self.url}/api/v1/{path}", params=params) as resp:
            body = await resp.json()
        assert body["status"] == "success", (path, params, body.get("error"))
        return body["data"]

    async def ready(self) -> bool:
        with contextlib.suppress(aiohttp.ClientError):
            async with self.session.get(f"{self.url}/-/ready") as resp:
                return resp.status == 200
        return False

    def log(self) -> str:
        return (self.directory / "prometheus.log").read_text(errors="replace")[-3000:]


@contextlib.asynccontextmanager
async def running_prometheus(directory: Path, config: str) -> AsyncIterator[Prometheus]:
    """Prometheus with `config` (prometheus.yml text), its data in `directory`; stopped (by
    its PID) when the block ends."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "prometheus.yml").write_text(config)
    async with aiohttp.ClientSession() as session:
        prometheus = Prometheus(directory, session)
        argv = [
            debian_binary("prometheus"),
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address={prometheus.url.removeprefix('http://')}",
        ]
        with (directory / "prometheus.log").open("wb") as log:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        try:

            async def ready() -> bool:
                assert process.poll() is None, prometheus.log()
                return await prometheus.ready()

            await until(ready, 60, "prometheus never became ready")
            yield prometheus
        finally:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
