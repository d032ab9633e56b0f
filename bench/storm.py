"""The storm load generator: many registry clients at once, each its own user, pulling or
pushing an image the way docker does. Used by run.py's storm cases (cases.py) and by
scale.py; written once, asynchronous (aiohttp on uvloop, one process).

A client, as the docker daemon does it with a registry that asks for Basic auth:
- ping: `GET /v2/` without credentials; a 401 with a Basic challenge means every later request
  carries the credentials, a 200 means none is sent (direct and the limit);
- pull: `HEAD` of the manifest by tag (the digest), `GET` of the manifest by digest, `GET` of the
  config blob, then the layers it lists, 3 at a time (docker's max-concurrent-downloads);
- push: per layer, 5 at a time (docker's max-concurrent-uploads), `HEAD` of the blob (404),
  `POST` an upload, `PATCH` the bytes, `PUT ?digest=`; then the config blob the same way and
  `PUT` of the manifest.
A client stops at its first unexpected answer (docker does not retry a 429 or a 401), so a
storm's outcome is how many clients completed and which answers stopped the others.

Latency is measured to the response headers (what a front end's decision and the registry
add); the wall time runs to the last byte of the last client.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import bcrypt
import uvloop
from yarl import URL

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
ACCEPT_MANIFESTS = ", ".join(
    (
        MANIFEST_TYPE,
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)
PULL_LAYERS_AT_ONCE = 3  # docker's max-concurrent-downloads
PUSH_LAYERS_AT_ONCE = 5  # docker's max-concurrent-uploads
READ_TIMEOUT = 120.0  # seconds a client waits for any answer before it counts as an error
HEADER_BYTES = 32  # the random start that makes each generated blob distinct


# --- images ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    digest: str
    data: bytes


@dataclass(frozen=True)
class Image:
    """An OCI image: one manifest, a config and its layers, held in memory."""

    manifest: bytes
    digest: str  # the manifest's
    config: Blob
    layers: tuple[Blob, ...]

    @property
    def size(self) -> int:
        return sum(len(b.data) for b in (self.config, *self.layers))


def blob(data: bytes) -> Blob:
    return Blob("sha256:" + hashlib.sha256(data).hexdigest(), data)


def random_block(size: int) -> bytes:
    """Incompressible bytes, shared by generated layers (each starts differently)."""
    return os.urandom(size)


def make_image(sizes: Sequence[int], block: bytes) -> Image:
    """An image whose layers have these sizes: each a fresh random start and then `block`, so
    every layer of every image is a distinct blob without generating all of it at random. The
    layers are not real tarballs: no client here unpacks them, and the registry does not look."""
    layers = tuple(blob(os.urandom(HEADER_BYTES) + block[: size - HEADER_BYTES]) for size in sizes)
    config = blob(
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
            }
        ).encode()
    )
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": config.digest, "size": len(config.data)},
            "layers": [
                {"mediaType": LAYER_TYPE, "digest": layer.digest, "size": len(layer.data)}
                for layer in layers
            ],
        }
    ).encode()
    return Image(manifest, blob(manifest).digest, config, layers)


# --- users -----------------------------------------------------------------------------------


def bcrypt_line(item: tuple[str, str, int]) -> str:
    """One htpasswd line: (user, password, cost)."""
    user, password, cost = item
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()
    return f"{user}:$2y${hashed[4:]}\n"  # as `htpasswd -B` writes it


def check_seconds(cost: int, times: int = 3) -> float:
    """What one bcrypt check at `cost` takes on this machine now (the median of `times`)."""
    hashed = bcrypt.hashpw(b"storm", bcrypt.gensalt(cost))
    spent = []
    for _ in range(times):
        started = time.perf_counter()
        bcrypt.checkpw(b"storm", hashed)
        spent.append(time.perf_counter() - started)
    return statistics.median(spent)


def htpasswd_lines(passwords: dict[str, str], cost: int) -> list[str]:
    """htpasswd lines for many users, hashed on every CPU (bcrypt is the slow part)."""
    items = [(user, password, cost) for user, password in passwords.items()]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(bcrypt_line, items, chunksize=8))


# --- one client ------------------------------------------------------------------------------


class Stopped(Exception):
    """A client's pull or push failed; `kind` is what stopped it (a status, or an error)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


@dataclass
class Tally:
    """What every client of one storm saw."""

    latencies: list[float] = field(default_factory=list)  # seconds to headers, each request
    errors: Counter[str] = field(default_factory=Counter)  # what stopped each failed client
    first_errors: list[str] = field(default_factory=list)  # a few, for the log
    completed: int = 0
    received: int = 0  # body bytes
    sent: int = 0


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes  # only when asked for
    url: URL


class Client:
    """One registry client: its own user, its own connection pool (as a separate host)."""

    def __init__(
        self,
        base: str,
        credentials: tuple[str, str] | None,
        context: ssl.SSLContext | None,
        tally: Tally,
    ) -> None:
        self._base = URL(base)
        self._credentials = credentials
        self._authorization: dict[str, str] = {}  # once the ping asked for credentials
        self._tally = tally
        connector = aiohttp.TCPConnector(ssl=context if context else False, limit=0)
        timeout = aiohttp.ClientTimeout(sock_connect=30, sock_read=READ_TIMEOUT)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False
        )

    async def close(self) -> None:
        await self._session.close()

    async def call(
        self,
        method: str,
        target: str | URL,
        expected: Iterable[int],
        *,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
        keep_body: bool = False,
        digest: str | None = None,
    ) -> Answer:
        """One request; the body is read to the end (kept, or checked against `digest`)."""
        url = self._base.join(target) if isinstance(target, URL) else self._base.with_path(target)
        started = time.perf_counter()
        try:
            async with self._session.request(
                method, url, headers={**self._authorization, **(headers or {})}, data=data,
                allow_redirects=False,
            ) as response:  # fmt: skip
                self._tally.latencies.append(time.perf_counter() - started)
                body, size = await _read(response, keep_body, digest)
                answer = Answer(response.status, dict(response.headers), body, response.url)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Stopped(type(exc).__name__, f"{method} {url}") from exc
        self._tally.sent += len(data or b"")
        self._tally.received += size
        if answer.status not in expected:
            raise Stopped(str(answer.status), f"{method} {url}")
        if response.content_length not in (None, size) and method != "HEAD":
            raise Stopped("short body", f"{method} {url}: {size} of {response.content_length}")
        return answer

    async def ping(self) -> None:
        """The anonymous ping; a Basic challenge turns credentials on for what follows."""
        answer = await self.call("GET", "/v2/", (200, 401))
        if answer.status == 401:
            challenge = answer.headers.get("WWW-Authenticate", "")
            if not challenge.lower().startswith("basic") or self._credentials is None:
                raise Stopped("challenge", f"cannot answer {challenge!r}")
            self._authorization = {"Authorization": aiohttp.encode_basic_auth(*self._credentials)}

    async def pull(self, repository: str, tag: str, verify: bool = False) -> None:
        """Pull completely; `verify` checks every blob's sha256 (costs the generator CPU)."""
        await self.ping()
        accept = {"Accept": ACCEPT_MANIFESTS}
        head = await self.call("HEAD", f"/v2/{repository}/manifests/{tag}", (200,), headers=accept)
        digest = head.headers.get("Docker-Content-Digest", "")
        manifest = await self.call(
            "GET", f"/v2/{repository}/manifests/{digest}", (200,), headers=accept,
            keep_body=True, digest=digest if verify else None,
        )  # fmt: skip
        document = json.loads(manifest.body)
        config = document["config"]["digest"]
        await self.call(
            "GET", f"/v2/{repository}/blobs/{config}", (200,), digest=config if verify else None
        )
        gate = asyncio.Semaphore(PULL_LAYERS_AT_ONCE)

        async def layer(digest: str) -> None:
            async with gate:
                path = f"/v2/{repository}/blobs/{digest}"
                await self.call("GET", path, (200,), digest=digest if verify else None)

        await _all(layer(entry["digest"]) for entry in document["layers"])

    async def push(self, repository: str, tag: str, image: Image) -> None:
        await self.ping()
        gate = asyncio.Semaphore(PUSH_LAYERS_AT_ONCE)

        async def layer(item: Blob) -> None:
            async with gate:
                await self.upload(repository, item)

        await _all(layer(item) for item in image.layers)
        await self.upload(repository, image.config)
        await self.call(
            "PUT", f"/v2/{repository}/manifests/{tag}", (201,),
            headers={"Content-Type": MANIFEST_TYPE}, data=image.manifest,
        )  # fmt: skip

    async def upload(self, repository: str, item: Blob) -> None:
        """The upload protocol a docker push uses for one blob it does not know is there."""
        head = await self.call("HEAD", f"/v2/{repository}/blobs/{item.digest}", (200, 404))
        if head.status == 200:
            return  # already there: docker skips it too
        started = await self.call("POST", f"/v2/{repository}/blobs/uploads/", (202,))
        octets = {"Content-Type": "application/octet-stream"}
        patched = await self.call(
            "PATCH", _location(started), (202,), headers=octets, data=item.data
        )
        location = str(_location(patched))
        separator = "&" if "?" in location else "?"
        done = URL(f"{location}{separator}digest={item.digest}", encoded=True)
        await self.call("PUT", done, (201,), headers=octets, data=b"")


def _location(answer: Answer) -> URL:
    """Where the registry says to go on, relative to the URL it answered."""
    location = answer.headers.get("Location")
    if not location:
        raise Stopped("no Location", str(answer.url))
    return answer.url.join(URL(location, encoded=True))


async def _read(
    response: aiohttp.ClientResponse, keep: bool, digest: str | None
) -> tuple[bytes, int]:
    """Read the body to the end: kept, checked against `digest`, or only counted."""
    kept = bytearray()
    sha = hashlib.sha256() if digest else None
    size = 0
    while chunk := await response.content.readany():
        size += len(chunk)
        if keep:
            kept += chunk
        if sha is not None:
            sha.update(chunk)
    if sha is not None and "sha256:" + sha.hexdigest() != digest:
        raise Stopped("bad digest", f"{response.method} {response.url}")
    return bytes(kept), size


async def _all(coroutines: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run together; the first failure cancels the rest (raised in an ExceptionGroup)."""
    async with asyncio.TaskGroup() as group:
        for coroutine in coroutines:
            group.create_task(coroutine)


# --- a storm ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One storm against one target."""

    clients: int
    completed: int
    seconds: float  # start to the last byte of the last client
    requests: int
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]  # what stopped the failed clients, by kind
    first_errors: tuple[str, ...]
    megabytes: float  # body bytes received and sent, 10^6
    generator_cpu_seconds: float  # CPU of the thread running the clients, during the storm

    @property
    def generator_cpu_share(self) -> float:
        """Cores the generator kept busy: near 1.0 means it, not the target, set the pace."""
        return self.generator_cpu_seconds / self.seconds if self.seconds else 0.0


Work = Callable[[Client, int], Awaitable[None]]


def pulls(repository: str, tag: str = "latest", verify: bool = False) -> Work:
    """Every client pulls the same image."""
    return lambda client, _: client.pull(repository, tag, verify)


def pushes(images: Sequence[tuple[str, Image]], tag: str = "latest") -> Work:
    """Client i pushes `images[i]`: (repository, image)."""
    return lambda client, i: client.push(images[i][0], tag, images[i][1])


def run_storm(
    base: str,
    credentials: Sequence[tuple[str, str] | None],
    context: ssl.SSLContext | None,
    work: Work,
    limit: float,
) -> Outcome:
    """Start one client per entry of `credentials` at once, each doing `work(client, index)`;
    wait for all (at most `limit` seconds: the rest count as "timeout")."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_storm(base, credentials, context, work, limit))


async def _storm(
    base: str,
    credentials: Sequence[tuple[str, str] | None],
    context: ssl.SSLContext | None,
    work: Work,
    limit: float,
) -> Outcome:
    tally = Tally()
    clients = [Client(base, c, context, tally) for c in credentials]
    cpu_before, started = time.thread_time(), time.perf_counter()

    async def one(index: int) -> None:
        try:
            await work(clients[index], index)
            tally.completed += 1
        except* Exception as group:  # Stopped, or an answer this client cannot read
            _failed(tally, _first(group))
        finally:
            await clients[index].close()

    tasks = [asyncio.create_task(one(i)) for i in range(len(clients))]
    _, late = await asyncio.wait(tasks, timeout=limit)
    for task in late:
        task.cancel()
        tally.errors["timeout"] += 1
    await asyncio.gather(*late, return_exceptions=True)
    seconds = time.perf_counter() - started
    cpu = time.thread_time() - cpu_before
    latencies = sorted(tally.latencies) or [0.0]
    return Outcome(
        clients=len(clients),
        completed=tally.completed,
        seconds=seconds,
        requests=len(tally.latencies),
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        errors=dict(tally.errors),
        first_errors=tuple(tally.first_errors),
        megabytes=(tally.received + tally.sent) / 1e6,
        generator_cpu_seconds=cpu,
    )


def _first(error: BaseException) -> BaseException:
    """The first exception at the bottom of (nested) exception groups."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _failed(tally: Tally, error: BaseException) -> None:
    kind = error.kind if isinstance(error, Stopped) else type(error).__name__
    tally.errors[kind] += 1
    if len(tally.first_errors) < 5:
        tally.first_errors.append(str(error))
