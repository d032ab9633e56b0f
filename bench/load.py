"""Load on one target: plain requests, wrk and ab runs, skopeo pushes."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import shutil
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.fixtures import PUSHER, Fixtures
from bench.plan import MIB, TEMPLATES
from bench.processes import tool
from bench.targets import Target
from devtools.skopeo import Skopeo


class Client:
    """Plain http.client requests to one target, with the bench's CA and users."""

    def __init__(self, target: Target, fixtures: Fixtures) -> None:
        self.target = target
        self._fixtures = fixtures
        self.context = ssl.create_default_context(cafile=str(fixtures.cert))

    def authorization(self, user: str | None) -> str | None:
        if user is None:
            return None
        token = f"{user}:{self._fixtures.passwords[user]}".encode()
        return "Basic " + base64.b64encode(token).decode()

    def connect(self) -> http.client.HTTPConnection:
        if self.target.tls:
            return http.client.HTTPSConnection(
                "127.0.0.1", self.target.port, context=self.context, timeout=60
            )
        return http.client.HTTPConnection("127.0.0.1", self.target.port, timeout=60)

    def request(self, method: str, path: str, user: str | None) -> http.client.HTTPResponse:
        """One request on a new connection; the caller reads (or not) and closes."""
        connection = self.connect()
        auth = self.authorization(user)
        connection.request(method, path, headers={"Authorization": auth} if auth else {})
        return connection.getresponse()

    def verify_blob(self, path: str, user: str, size: int, digest: str) -> None:
        """GET a blob and check its length and sha256 (untimed: the timed GETs use curl)."""
        buffer = bytearray(MIB)
        view = memoryview(buffer)
        sha = hashlib.sha256()
        received = 0
        response = self.request("GET", path, user)
        if response.status != 200:
            raise RuntimeError(f"{self.target.name}: GET {path} answered {response.status}")
        while count := response.readinto(buffer):
            sha.update(view[:count])
            received += count
        response.close()
        if received != size or "sha256:" + sha.hexdigest() != digest:
            raise RuntimeError(f"{self.target.name}: GET {path}: wrong bytes ({received})")


# --- load generators -------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """What a load generator saw in `seconds`: answers, latency percentiles, failures."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non_2xx: int  # answers other than 2xx/3xx
    failed: int  # requests without an answer: connect, read or write errors, timeouts


def wrk(
    url: str, method: str, authorization: str | None, connections: int, seconds: int,
    accept: str | None = None,
) -> Load:  # fmt: skip
    argv = [tool("wrk"), "-t", "1", "-c", str(connections), "-d", f"{seconds}s",
            "--timeout", "30s", "-s", str(TEMPLATES / "wrk-report.lua"), url,
            "--", method, authorization or "-", *([accept] if accept else [])]  # fmt: skip
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    report = json.loads(out.strip().splitlines()[-1])
    return Load(
        requests=report["requests"],
        seconds=report["duration_us"] / 1e6,
        p50_ms=report["p50_us"] / 1000,
        p99_ms=report["p99_us"] / 1000,
        non_2xx=report["status_errors"],
        failed=report["failed"],
    )


def ab(url: str, authorization: str | None, connections: int, seconds: int) -> Load:
    """ApacheBench, for HEAD: wrk waits for the body a HEAD answer announces (wg/wrk#198)."""
    headers = ["-H", f"Authorization: {authorization}"] if authorization else []
    argv = [tool("ab"), "-q", "-i", "-k", "-r", "-c", str(connections), "-t", str(seconds),
            "-n", "100000000", "-s", "30", *headers, url]  # fmt: skip
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout

    def figure(pattern: str) -> float:
        """A figure of the report; percentiles are missing when (almost) nothing answered."""
        match = re.search(pattern, out, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    return Load(
        requests=int(figure(r"^Complete requests:\s+(\d+)")),
        seconds=figure(r"^Time taken for tests:\s+([\d.]+)") or seconds,
        p50_ms=figure(r"^\s+50%\s+(\d+)"),  # ab's percentiles are whole milliseconds
        p99_ms=figure(r"^\s+99%\s+(\d+)"),
        non_2xx=int(figure(r"^Non-2xx responses:\s+(\d+)")),
        failed=int(figure(r"^Failed requests:\s+(\d+)")),
    )


def push(target: Target, fixtures: Fixtures, repository: str, workdir: Path) -> float:
    """Seconds for skopeo to push the image, with a blob-info cache of its own."""
    skopeo = Skopeo(Path(tempfile.mkdtemp(prefix="skopeo-home-", dir=workdir)), timeout=600)
    insecure = [] if target.tls else ["--dest-tls-verify=false"]
    start = time.perf_counter()
    done = skopeo.copy(
        f"oci:{fixtures.layout}:bench", f"docker://127.0.0.1:{target.port}/{repository}:latest",
        creds=f"{PUSHER}:{fixtures.passwords[PUSHER]}",
        dest_cert_dir=fixtures.cert_dir if target.tls else None, extra=["--quiet", *insecure],
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    shutil.rmtree(skopeo.workdir)
    if done.returncode != 0:
        raise RuntimeError(f"{target.name}: skopeo push failed: {done.stderr.strip()}")
    return elapsed
