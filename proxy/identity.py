"""Who is asking: the answer of the authentication step, read by authorization, forwarding and
the logs. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from .addresses import IPAddress


@dataclass(frozen=True)
class Identity:
    """Who is asking and from where. `user` is None for a request without credentials;
    `upstream` is the user's own registry when their backend names one (Redis users)."""

    user: str | None
    groups: frozenset[str] = frozenset()
    address: IPAddress | None = None
    upstream: str | None = None

    @property
    def anonymous(self) -> bool:
        return self.user is None
