"""One request's context: made once when the request arrives and passed to every step."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from ..conf.config import Config
from ..conf.snapshot import Snapshot
from ..core.addresses import Origin, address_text
from ..http import web
from ..http.routes import Operation
from ..policy.identity import Identity
from ..policy.ratelimits import Charge
from ..policy.rules import Verdict
from ..upstream.forward import Route

Release = Callable[[], Awaitable[object] | None]  # called when the request ends


@dataclass(slots=True, eq=False)
class RequestContext:
    """The request, the snapshot it is decided with, and what each step found: the operation
    (classify), the identity (identify), the verdict and route (authorize), a body a guard
    read whole, the rate-limit budget it spends, and what the answer sent (for the access
    and audit logs and metrics)."""

    request: web.BaseRequest
    snapshot: Snapshot
    origin: Origin
    counted_as: str = "refused"  # the request's label in metrics (classify sets its action)
    operation: Operation | None = None
    identity: Identity | None = None
    verdict: Verdict | None = None
    route: Route | None = None
    body: bytes | None = None  # read whole by a guard (a manifest): forwarded as read
    sent: int | None = None  # body bytes sent; None: the answer's Content-Length
    charge: Charge | None = None  # the rate-limit budget the request spends (guards.ratelimit)
    _releases: list[Release] | None = None

    @property
    def config(self) -> Config:
        return self.snapshot.config

    @property
    def user(self) -> str | None:
        return self.identity.user if self.identity is not None else None

    @property
    def owner(self) -> str:
        """Whose share of a worker's resources the request uses: its user's, or, without
        credentials, its address's."""
        user = self.user
        return f"user:{user}" if user is not None else f"addr:{self.origin.client}"

    @property
    def client(self) -> str | None:
        """The client's address as the proxy believes it (trusted X-Forwarded-For)."""
        address = self.origin.address
        return address_text(address) if address is not None else None

    def defer(self, release: Release) -> None:
        """Call `release` (plain or async) when the request ends, in reverse order."""
        if self._releases is None:
            self._releases = []  # most requests hold nothing: no list for them
        self._releases.append(release)

    async def hold(self, resource: AbstractAsyncContextManager[object]) -> None:
        """Enter `resource` (a lock) now and leave it when the request ends."""
        await resource.__aenter__()
        self.defer(lambda: resource.__aexit__(None, None, None))

    def release(self) -> None:
        """Release what the steps held, newest first, when none of it is to be awaited (what
        the steps before identify hold)."""
        while self._releases:
            done = self._releases.pop()()
            assert done is None, "an awaitable release: close() the context instead"

    async def close(self) -> None:
        """Release what the steps held, newest first."""
        while self._releases:
            done = self._releases.pop()()
            if done is not None:
                await done
